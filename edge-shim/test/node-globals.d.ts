// The few Node APIs test/global-setup.ts and test/database.ts use: they run in Node (vitest's
// main process), not in workerd, and the project carries no @types/node for three functions.
declare const process: { env: Record<string, string | undefined>; pid: number };
declare module "node:fs" {
  export function readdirSync(path: string): string[];
  export function readFileSync(path: string, encoding: "utf8"): string;
}
declare module "node:path" {
  export function join(...parts: string[]): string;
}
interface ImportMeta {
  dirname: string;
}
