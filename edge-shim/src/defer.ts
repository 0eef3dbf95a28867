// Owns the one planned way for an edge handler to say "the container should answer this":
// throwing DeferToOrigin. It is for requests the edge recognises but deliberately does not
// answer itself (a body the container's JSON parser must judge, a user seen for the first
// time, a query string the edge does not implement). It must be thrown before any side
// effect. edge.ts logs it as `edge_deferred` (not `edge_fallback`, which means a failure), and
// shadow.ts logs `shadow_deferred` instead of a difference.

export class DeferToOrigin extends Error {
  constructor(readonly reason: string) {
    super(`deferred to the origin: ${reason}`);
    this.name = "DeferToOrigin";
  }
}

export function isDeferral(err: unknown): err is DeferToOrigin {
  return err instanceof DeferToOrigin;
}
