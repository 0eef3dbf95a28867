-- The edge's Queue consumer hands a job of an edge-owned kind back to the container when it
-- recognises the job but does not handle that case itself (docs/STRANGLER.md, "Jobs"): it
-- sets handed_back_at, before any effect, and the container's workers then claim the job
-- although the manifest gives its kind to the edge. NULL for every other job.
alter table jobs add column handed_back_at timestamptz;
