// The callbridge API client for the frontend: typed fetch client, SSE follower, WebSocket URLs.
export * from "./client.js";
export * from "./sse.js";
export * from "./websocket.js";
