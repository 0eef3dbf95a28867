// Owns the Cron Trigger handler. One schedule today ("*/5 * * * *"): a heartbeat line that
// proves the trigger fires in each environment. Scheduled jobs that move from the container's
// Postgres cron arrive here keyed by `controller.cron`.

import type { Env } from "./env";

export async function runScheduled(controller: ScheduledController, _env: Env, _ctx: ExecutionContext): Promise<void> {
  console.log(
    JSON.stringify({
      event: "cron_heartbeat",
      cron: controller.cron,
      scheduled_time: new Date(controller.scheduledTime).toISOString(),
    }),
  );
}
