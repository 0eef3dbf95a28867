-- Phone numbers come from the platform's Telnyx account (docs/adr/0015-phone-numbers-from-the-telnyx-account.md)
-- and outbound dialing is guarded against toll fraud (docs/adr/0016-toll-fraud-guard-on-dialing.md).

-- Where an organisation's number came from: `account` (already held by the Telnyx account
-- and unassigned) or `order` (bought for it through a number order). Rows from before this
-- migration were typed in by hand: `legacy`, kept so inbound routing does not break; the
-- operator reconciles them against the account (docs/TELNYX.md).
alter table phone_numbers
    add column source text not null default 'legacy'
        check (source in ('legacy', 'account', 'order')),
    add column telnyx_phone_number_id text,
    add column telnyx_order_id text;
alter table phone_numbers alter column source drop default;

-- The organisation's dialing policy. `dial_countries` null = the countries of its own
-- numbers; `dial_min_role` is the least role that may place calls.
alter table organisations
    add column dial_countries text[]
        check (dial_countries is null or cardinality(dial_countries) <= 250),
    add column dial_min_role text not null default 'member'
        check (dial_min_role in ('member', 'admin', 'owner'));

-- The guard counts a user's recent and live outbound calls across organisations, and an
-- organisation's live ones (the per-organisation window uses calls_org_created_idx).
create index calls_outbound_by_user_idx on calls (created_by, created_at)
    where direction = 'outbound';
create index calls_live_by_org_idx on calls (organisation_id)
    where status not in ('ended', 'failed');

-- Set once when the maximum-duration job warned the parties and when it hung up, so a
-- re-run job (at-least-once) logs each to the call's events only once.
alter table calls
    add column max_duration_warned_at timestamptz,
    add column max_duration_hangup_at timestamptz;
