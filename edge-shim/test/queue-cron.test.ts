// The queue consumer and the cron handler, driven through the Worker's default export.
import { createExecutionContext, createMessageBatch, createScheduledController, getQueueResult } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { afterEach, describe, expect, it, vi } from "vitest";
import worker from "../src/index";
import { logged } from "./helpers";

afterEach(() => vi.restoreAllMocks());

describe("queue consumer (callbridge-webhooks)", () => {
  it("acknowledges and logs every message, well-formed or not", async () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const sent = new Date("2026-11-26T05:00:00Z");
    const batch = createMessageBatch("callbridge-webhooks", [
      { id: "m1", timestamp: sent, attempts: 1, body: { kind: "webhook.telnyx", event_id: "ev-1" } },
      { id: "m2", timestamp: sent, attempts: 2, body: "not an envelope" },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, env, ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.explicitAcks.sort()).toEqual(["m1", "m2"]);
    expect(result.retryMessages).toEqual([]);
    expect(logged(log, "queue_message")).toEqual([
      {
        event: "queue_message",
        queue: "callbridge-webhooks",
        id: "m1",
        attempts: 1,
        sent_at: "2026-11-26T05:00:00.000Z",
        fields: ["event_id", "kind"],
      },
    ]);
    expect(logged(log, "queue_message_rejected")).toMatchObject([{ id: "m2", attempts: 2 }]);
  });
});

describe("cron", () => {
  it("logs a heartbeat for the five-minute trigger", async () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const controller = createScheduledController({ cron: "*/5 * * * *", scheduledTime: Date.UTC(2026, 10, 26, 5, 5) });
    await worker.scheduled(controller, env, createExecutionContext());
    expect(logged(log, "cron_heartbeat")).toEqual([
      { event: "cron_heartbeat", cron: "*/5 * * * *", scheduled_time: "2026-11-26T05:05:00.000Z" },
    ]);
  });
});
