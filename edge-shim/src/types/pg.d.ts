// The slice of node-postgres (pg 8.16.3) the edge uses, typed by hand: @types/pg would pull
// @types/node into a Workers project, whose globals clash with the Workers runtime types.
declare module "pg" {
  export interface QueryResult<R> {
    rows: R[];
    rowCount: number | null;
  }
  export interface ClientConfig {
    connectionString?: string;
    /** Milliseconds to wait for a connection before failing (0 = no limit). */
    connectionTimeoutMillis?: number;
    /** Milliseconds before the server cancels a statement. */
    statement_timeout?: number;
    query_timeout?: number;
  }
  export class Client {
    constructor(config?: ClientConfig);
    connect(): Promise<void>;
    query<R = Record<string, unknown>>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
    end(): Promise<void>;
    on(event: "error", listener: (err: Error) => void): this;
  }
  const pg: { Client: typeof Client };
  export default pg;
}
