// Owns the consumer of the callbridge-webhooks queue. Today nothing produces to it: the
// webhook receivers are still `origin`, so the container writes the inbox itself. Until the
// webhook route migration brings the edge's Hyperdrive inbox writer, each message is logged
// and acknowledged; a message this consumer cannot parse is acknowledged too (retrying would
// not make it parse) and logged as rejected.

import type { Env } from "./env";

export async function consumeQueue(batch: MessageBatch, _env: Env, _ctx: ExecutionContext): Promise<void> {
  for (const message of batch.messages) {
    const body = message.body;
    const wellFormed = typeof body === "object" && body !== null && !Array.isArray(body);
    console.log(
      JSON.stringify({
        event: wellFormed ? "queue_message" : "queue_message_rejected",
        queue: batch.queue,
        id: message.id,
        attempts: message.attempts,
        sent_at: message.timestamp.toISOString(),
        ...(wellFormed ? { fields: Object.keys(body).sort() } : { reason: "body is not a JSON object" }),
      }),
    );
    message.ack();
  }
}
