// Owns the Worker's `queue` handler: callbridge-webhooks (job envelopes) and its dead-letter
// queue go to the edge job consumer (src/jobs.ts) with the manifest's job owners and the edge
// job handlers registered here. A kind routes.json gives the edge must have a handler here;
// the Worker refuses to start otherwise.

import type { Env } from "./env";
import { checkJobRegistry, consumeJobs, type JobRegistry } from "./jobs";
import { WORK } from "./manifest";
import { callMaxDuration } from "./max-duration";
import { recordingImport } from "./recording-import";
import { telnyxEvent } from "./telnyx-event";
import { assemblyaiEvent, recordingTranscribe } from "./transcripts";

/** The job kinds the edge can run, by the container's kind names. */
export const JOB_HANDLERS: JobRegistry = {
  "telnyx.event": telnyxEvent,
  "recording.import": recordingImport,
  "recording.transcribe": recordingTranscribe,
  "assemblyai.event": assemblyaiEvent,
  "call.max_duration": callMaxDuration,
};

checkJobRegistry(WORK, JOB_HANDLERS);

export async function consumeQueue(batch: MessageBatch, env: Env, _ctx: ExecutionContext): Promise<void> {
  await consumeJobs(batch, env, WORK, JOB_HANDLERS);
}
