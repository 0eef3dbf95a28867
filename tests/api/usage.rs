//! Usage, cost and quotas (docs/USAGE.md): a simulated call's ledger equals what the
//! simulators counted; the translation cache's hits cost nothing; quotas refuse new calls
//! and end (or flag) running ones; another organisation's usage is never visible; AssemblyAI
//! drift is reported once.
#![cfg(feature = "sim")]

use crate::common;

use std::time::Duration;

use callbridge::sim::assemblyai::AssemblyAiSim;
use callbridge::sim::telnyx::RecordedCommand;
use callbridge::sim::telnyx_media::{self, PlayOptions};
use callbridge::sim::translation::{self as sim, TranslationSim};
use callbridge::usage::{self, Entry, Owner, quota, reconcile};
use common::assert_problem;
use common::authjs::Session;
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const AGENT_SAYS: &str = "hello, this is the clinic calling";
const REMOTE_SAYS: &str = "hola, necesito una cita";

struct It {
    t: TelnyxApp,
    aai: AssemblyAiSim,
    providers: TranslationSim,
    ada: Session,
    org: Uuid,
}

async fn spawn_with(extra: &[(&str, &str)]) -> It {
    let aai = AssemblyAiSim::start("sim-aai-key", 0).await.unwrap();
    aai.set_model_script("universal-streaming-english", "en", &[AGENT_SAYS]);
    aai.set_model_script("universal-streaming-multilingual", "es", &[REMOTE_SAYS]);
    let providers = TranslationSim::start(0).await.unwrap();
    let (aai_url, base) = (aai.streaming_url(), providers.base());
    let mut env = vec![
        ("ASSEMBLYAI_API_KEY", "sim-aai-key"),
        ("ASSEMBLYAI_STREAMING_URL", aai_url.as_str()),
        ("DEEPL_API_KEY", sim::DEEPL_KEY),
        ("DEEPL_API_BASE", base.as_str()),
        ("ELEVENLABS_API_KEY", sim::ELEVENLABS_KEY),
        ("ELEVENLABS_API_BASE", base.as_str()),
    ];
    env.extend_from_slice(extra);
    let t = TelnyxApp::spawn_with(&env).await;
    t.sim.send_hangup_webhooks(&t.webhook_url());
    let ada = t.app.sign_in("Ada").await;
    t.own_number(&ada, "+14155550100").await;
    let org = t.app.organisation_of(&ada).await;
    let policy = t
        .app
        .request_as(
            Method::PUT,
            &ada,
            &format!("/api/orgs/{org}/dialing-policy"),
        )
        .json(&json!({"allowed_countries": ["US", "ES"], "min_role": "member"}))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 200);
    It {
        t,
        aai,
        providers,
        ada,
        org,
    }
}

fn interpreted() -> Value {
    json!({
        "from": "+14155550100",
        "agent": {"number": "+14155550111", "language": "en", "voice_id": "voice-en"},
        "remote": {"number": "+34911222333", "language": "es", "voice_id": "voice-es"},
        "original_audio": "off",
    })
}

impl It {
    /// `callbridge quotas <args> --org <this organisation>`, as an operator runs it; its
    /// standard output (the quotas now in effect).
    fn quotas(&self, args: &[&str]) -> String {
        let output = quotas_command(&self.t.app, args, self.org);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn dial(&self) -> reqwest::Response {
        self.t
            .app
            .request_as(Method::POST, &self.ada, "/api/calls")
            .json(&interpreted())
            .send()
            .await
            .unwrap()
    }

    async fn call(&self, id: &str) -> Value {
        self.t
            .app
            .get_as(&self.ada, &format!("/api/calls/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    async fn deliver(&self, dial: &RecordedCommand, range: std::ops::Range<usize>, source: &str) {
        self.t.deliver_leg(dial, range, source).await;
    }

    fn dial_of(&self, leg: &str) -> RecordedCommand {
        self.t.sim.dial_of_leg(leg).expect("the leg was dialled")
    }

    fn stream_url(&self, dial: &RecordedCommand) -> String {
        let url = dial.body["stream_url"].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap();
        format!("ws://127.0.0.1:{}/media/telnyx/{token}", self.t.app.port)
    }

    /// Places an interpreted call and answers both legs.
    async fn answered_call(&self) -> (String, RecordedCommand, RecordedCommand) {
        let response = self.dial().await;
        assert_eq!(response.status(), 201);
        let call: Value = response.json().await.unwrap();
        let id = call["id"].as_str().unwrap().to_owned();
        let agent = self.dial_of("agent");
        self.deliver(&agent, 0..3, "caller").await;
        let remote = self.dial_of("remote");
        self.deliver(&remote, 0..3, "callee").await;
        assert_eq!(self.call(&id).await["status"], "answered");
        (id, agent, remote)
    }

    async fn until_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..100 {
            self.t.drain().await;
            let call = self.call(id).await;
            if call["status"] == status {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("call never reached {status}");
    }

    /// `(vendor, unit, quantity)` rows of the ledger for `call_id`, once `ready` holds.
    async fn ledger_when(
        &self,
        call_id: &str,
        ready: impl Fn(&[(String, String, f64)]) -> bool,
    ) -> Vec<(String, String, f64)> {
        let db = self.t.app.db().await;
        let call_id: Uuid = call_id.parse().unwrap();
        let mut rows = Vec::new();
        for _ in 0..150 {
            rows = db
                .query(
                    "select vendor, unit, quantity::float8 from usage_ledger where call_id = $1 order by id",
                    &[&call_id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("vendor"), r.get("unit"), r.get("quantity")))
                .collect();
            if ready(&rows) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the ledger never got there: {rows:?}");
    }
}

fn quotas_command(app: &common::TestApp, args: &[&str], org: Uuid) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .arg("quotas")
        .args(args)
        .args(["--org", &org.to_string()])
        .env_clear()
        .env("DATABASE_URL", common::database_url(&app.database))
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_quotas_command_keeps_what_it_is_not_told_and_refuses_nonsense() {
    let app = common::TestApp::spawn().await;
    let ada = app.sign_in("Ada").await;
    let org = app.organisation_of(&ada).await;
    let run = |args: &[&str]| quotas_command(&app, args, org);
    let row = || async {
        let row = app
            .db()
            .await
            .query_one(
                "select monthly_minutes, concurrent_calls, monthly_spend_cap::float8 as cap, at_limit
                 from usage_quotas where organisation_id = $1",
                &[&org],
            )
            .await
            .unwrap();
        (
            row.get::<_, Option<i64>>("monthly_minutes"),
            row.get::<_, Option<i64>>("concurrent_calls"),
            row.get::<_, Option<f64>>("cap"),
            row.get::<_, Option<String>>("at_limit"),
        )
    };
    let set = run(&["set", "--monthly-minutes", "6000", "--at-limit", "end"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert_eq!(row().await, (Some(6000), None, None, Some("end".into())));
    let set = run(&["set", "--monthly-spend-cap", "250"]);
    assert!(set.status.success());
    assert_eq!(
        row().await,
        (Some(6000), None, Some(250.0), Some("end".into())),
        "what it was not told stays"
    );
    let shown = run(&["show"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("monthly minutes    6000 (used 0.0)"),
        "{text}"
    );
    assert!(text.contains("monthly spend cap  250.00 USD"), "{text}");
    assert!(text.contains("at the limit       end"), "{text}");
    let set = run(&["set", "--at-limit", "default", "--monthly-minutes", "0"]);
    assert!(set.status.success());
    assert_eq!(row().await, (Some(0), None, Some(250.0), None));

    for (args, says) in [
        (
            &["set", "--monthly-minutes", "-5"][..],
            "must be 0 (no quota) or more",
        ),
        (
            &["set", "--at-limit", "sometimes"][..],
            "--at-limit must be end, continue or default",
        ),
        (
            &["set", "--concurrent-calls", "many"][..],
            "is neither a value nor `default`",
        ),
    ] {
        let refused = run(args);
        assert!(!refused.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        row().await,
        (Some(0), None, Some(250.0), None),
        "refusals change nothing"
    );
    let stranger = quotas_command(&app, &["show"], Uuid::now_v7());
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no organisation"));
}

fn total(rows: &[(String, String, f64)], vendor: &str, unit: &str) -> f64 {
    rows.iter()
        .filter(|(v, u, _)| v == vendor && u == unit)
        .map(|(_, _, q)| q)
        .sum()
}

fn count(rows: &[(String, String, f64)], vendor: &str, unit: &str) -> usize {
    rows.iter()
        .filter(|(v, u, _)| v == vendor && u == unit)
        .count()
}

fn party(url: String, pattern: &[(u64, bool)]) -> PlayOptions {
    let mut options = PlayOptions::new(url, telnyx_media::speech_like(pattern));
    options.inbound_only = true;
    options.realtime = true;
    options.linger = Duration::from_millis(2500);
    options
}

#[tokio::test]
async fn a_simulated_calls_ledger_equals_what_the_simulators_counted() {
    let it = spawn_with(&[]).await;
    let (id, agent, remote) = it.answered_call().await;
    let (agent_heard, remote_heard) = tokio::join!(
        telnyx_media::play(party(it.stream_url(&agent), &[(1200, true), (5800, false)])),
        telnyx_media::play(party(
            it.stream_url(&remote),
            &[(2500, false), (1200, true), (3300, false)]
        ))
    );
    agent_heard.unwrap();
    remote_heard.unwrap();
    // The remote party hangs up; we hang up the agent, whose hang-up Telnyx then reports.
    it.deliver(&remote, 3..4, "callee").await;
    it.until_status(&id, "ended").await;

    let sessions = it.aai.billed_session_seconds();
    assert_eq!(sessions.len(), 2, "one AssemblyAI session per leg");
    let rows = it
        .ledger_when(&id, |rows| {
            count(rows, "telnyx", "call_seconds") == 2
                && count(rows, "assemblyai", "streaming_seconds") == sessions.len()
                && count(rows, "elevenlabs", "characters") == 2
        })
        .await;

    // Telephony: each leg within a second of what the carrier counted.
    let mut carrier = it.t.sim.billed_call_seconds();
    assert_eq!(carrier.len(), 2, "{carrier:?}");
    carrier.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut ours: Vec<f64> = rows
        .iter()
        .filter(|(v, u, _)| v == "telnyx" && u == "call_seconds")
        .map(|(_, _, q)| *q)
        .collect();
    ours.sort_by(f64::total_cmp);
    for ((_, billed), ours) in carrier.iter().zip(&ours) {
        assert!(
            (billed - ours).abs() < 1.0,
            "carrier {billed} s, ledger {ours} s"
        );
        assert!(*ours > 5.0, "the legs were up for the whole conversation");
    }
    // Speech to text, speech and translation: exactly what the vendors counted.
    let stt: u64 = sessions.iter().map(|(_, s)| s).sum();
    assert_eq!(total(&rows, "assemblyai", "streaming_seconds"), stt as f64);
    let billed = it.providers.billed();
    assert!(billed.elevenlabs_characters > 0);
    assert_eq!(
        total(&rows, "elevenlabs", "characters"),
        billed.elevenlabs_characters as f64
    );
    assert!(billed.deepl_characters > 0);
    assert_eq!(
        total(&rows, "deepl", "characters"),
        billed.deepl_characters as f64
    );
    assert_eq!(total(&rows, "openai", "prompt_tokens"), 0.0);

    // The call shows its usage per vendor, with an estimated cost.
    let detail = it.call(&id).await;
    let vendors: Vec<&str> = detail["usage"]["vendors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vendor"].as_str().unwrap())
        .collect();
    assert_eq!(vendors, ["assemblyai", "deepl", "elevenlabs", "telnyx"]);
    let usd = detail["usage"]["estimated_cost"][0]["amount"]
        .as_f64()
        .unwrap();
    assert_eq!(detail["usage"]["estimated_cost"][0]["currency"], "USD");
    assert!(usd > 0.0, "{detail}");

    // A redelivered hang-up bills nothing twice.
    it.deliver(&remote, 3..4, "callee").await;
    let again = it.ledger_when(&id, |_| true).await;
    assert_eq!(count(&again, "telnyx", "call_seconds"), 2);
}

#[tokio::test]
async fn the_caches_hits_cost_nothing() {
    let it = spawn_with(&[]).await;
    let translate = || {
        it.t.app
            .request_as(Method::POST, &it.ada, "/api/translate")
            .json(&json!({"texts": ["good morning"], "source_language": "en", "target_language": "de"}))
            .send()
    };
    let first: Value = translate().await.unwrap().json().await.unwrap();
    assert_eq!(first["engine"], "deepl");
    // The cache is written in the background: until it is, DeepL answers (and bills) again.
    let mut deepl_answers = 1;
    let mut second = Value::Null;
    for _ in 0..50 {
        second = translate().await.unwrap().json().await.unwrap();
        if second["engine"] == "cache" {
            break;
        }
        deepl_answers += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second["engine"], "cache");
    // The ledger is written in batches: wait until every DeepL answer is in it.
    let report = loop_report(&it, |lines| {
        lines.iter().any(|l| l["vendor"] == "cache")
            && lines.iter().any(|l| {
                l["vendor"] == "deepl"
                    && l["quantity"].as_f64() == Some((12 * deepl_answers) as f64)
            })
    })
    .await;
    let line = |vendor: &str| {
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["vendor"] == vendor)
            .cloned()
            .unwrap()
    };
    let deepl = line("deepl");
    // DeepL's characters are what DeepL billed (each answer it gave, 12 characters), however
    // often the cache answered afterwards.
    assert_eq!(it.providers.billed().deepl_characters, 12 * deepl_answers);
    assert_eq!(deepl["quantity"], (12 * deepl_answers) as f64);
    assert!(deepl["estimated_cost"][0]["amount"].as_f64().unwrap() > 0.0);
    let cache = line("cache");
    assert_eq!(cache["unit"], "characters");
    assert!(cache["quantity"].as_f64().unwrap() >= 12.0);
    assert_eq!(cache["estimated_cost"][0]["amount"], 0.0);
}

async fn loop_report(it: &It, ready: impl Fn(&[Value]) -> bool) -> Value {
    for _ in 0..100 {
        let report: Value =
            it.t.app
                .get_as(&it.ada, "/api/usage?group_by=user")
                .await
                .json()
                .await
                .unwrap();
        if ready(
            report["lines"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the usage report never got there");
}

async fn ledger_row(
    db: &tokio_postgres::Client,
    org: Uuid,
    vendor: &str,
    unit: &str,
    quantity: f64,
    key: &str,
) {
    let entry = Entry {
        owner: Owner::Organisation {
            organisation_id: org.into(),
            user_id: None,
        },
        vendor: match vendor {
            "telnyx" => usage::unit::TELNYX,
            "assemblyai" => usage::unit::ASSEMBLYAI,
            _ => usage::unit::DEEPL,
        },
        unit: match unit {
            "call_seconds" => usage::unit::CALL_SECONDS,
            "streaming_seconds" => usage::unit::STREAMING_SECONDS,
            _ => usage::unit::CHARACTERS,
        },
        quantity,
        source_key: key.to_owned(),
        occurred_at: chrono::Utc::now(),
        metadata: json!({}),
    };
    usage::record(db, &[entry]).await.unwrap();
}

#[tokio::test]
async fn quotas_refuse_a_new_call_naming_the_quota() {
    let it = spawn_with(&[]).await;
    let db = it.t.app.db().await;
    // 10 minutes used this month; the quota is 10.
    ledger_row(&db, it.org, "telnyx", "call_seconds", 600.0, "test:minutes").await;
    // Set as an operator does: `callbridge quotas set`.
    it.quotas(&["set", "--monthly-minutes", "10"]);
    let problem = assert_problem(it.dial().await, 402).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:quota-exceeded");
    assert_eq!(problem["rule"], "quota-monthly-minutes");
    assert_eq!(problem["limit"], 10);
    assert!(
        it.t.sim.dial_of_leg("agent").is_none(),
        "nothing was dialled"
    );

    // A spend cap: the default price table prices DeepL characters at 25 USD per million.
    it.quotas(&[
        "set",
        "--monthly-minutes",
        "default",
        "--monthly-spend-cap",
        "0.5",
    ]);
    ledger_row(&db, it.org, "deepl", "characters", 20_000.0, "test:spend").await;
    let problem = assert_problem(it.dial().await, 402).await;
    assert_eq!(problem["rule"], "quota-monthly-spend");
    assert!(problem["detail"].as_str().unwrap().contains("USD"));

    // Concurrent calls: one live call is the quota.
    let shown = it.quotas(&[
        "set",
        "--monthly-spend-cap",
        "default",
        "--concurrent-calls",
        "1",
    ]);
    assert!(shown.contains("concurrent calls   1"), "{shown}");
    assert!(
        shown.contains("monthly minutes    none (used 10.0)"),
        "{shown}"
    );
    assert_eq!(it.dial().await.status(), 201);
    let response = it.dial().await;
    assert_eq!(response.headers()["retry-after"], "30");
    let problem = assert_problem(response, 429).await;
    assert_eq!(problem["rule"], "quota-concurrent-calls");

    let status: Value =
        it.t.app
            .get_as(&it.ada, "/api/usage/quotas")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(status["concurrent_calls"], 1);
    assert_eq!(status["at_limit"], "continue");
    assert_eq!(status["minutes_used"], 10.0);
}

#[tokio::test]
async fn a_running_call_is_warned_at_80_percent_and_ended_at_100_when_the_org_chose_it() {
    let it = spawn_with(&[]).await;
    let (id, _agent, _remote) = it.answered_call().await;
    let db = it.t.app.db().await;
    db.execute(
        "insert into usage_quotas (organisation_id, monthly_minutes, at_limit) values ($1, 10, 'end')",
        &[&it.org],
    )
    .await
    .unwrap();
    // 8.5 minutes this month: a warning, nothing more.
    ledger_row(&db, it.org, "telnyx", "call_seconds", 510.0, "test:eighty").await;
    let done = callbridge::cron::enforce_quotas(&it.t.app.state)
        .await
        .unwrap();
    assert_eq!((done.warned, done.reached), (1, 0));
    // A second pass says nothing again.
    assert_eq!(
        callbridge::cron::enforce_quotas(&it.t.app.state)
            .await
            .unwrap()
            .warned,
        0
    );
    // Past 10 minutes: the parties hear the announcement, then the call is hung up.
    ledger_row(&db, it.org, "telnyx", "call_seconds", 120.0, "test:hundred").await;
    let done = callbridge::cron::enforce_quotas(&it.t.app.state)
        .await
        .unwrap();
    assert_eq!((done.reached, done.announced, done.ended), (1, 1, 0));
    let spoken = it.t.sim.commands_named("speak");
    assert_eq!(spoken.len(), 2, "one announcement per leg");
    assert_eq!(spoken[0].body["payload"], quota::ANNOUNCEMENT);
    assert!(it.t.sim.commands_named("hangup").is_empty());
    // Once the announcement had its seconds:
    db.execute(
        "update usage_quota_marks set at = at - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    let done = callbridge::cron::enforce_quotas(&it.t.app.state)
        .await
        .unwrap();
    assert_eq!(done.ended, 1);
    let hangups = it.t.sim.commands_named("hangup");
    assert_eq!(hangups.len(), 2);
    assert!(
        hangups[0].body["command_id"]
            .as_str()
            .unwrap()
            .starts_with("quota-end:")
    );
    it.until_status(&id, "ended").await;
    let kinds: Vec<String> = db
        .query(
            "select kind from call_events where call_id = $1 and kind like 'usage.%' order by seq",
            &[&id.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "usage.quota_warning",
            "usage.quota_reached",
            "usage.quota_ended"
        ]
    );
}

#[tokio::test]
async fn by_default_a_call_past_its_quota_continues_and_is_flagged() {
    let it = spawn_with(&[("USAGE_DEFAULT_MONTHLY_MINUTES", "5")]).await;
    let (id, _agent, _remote) = it.answered_call().await;
    let db = it.t.app.db().await;
    ledger_row(&db, it.org, "telnyx", "call_seconds", 400.0, "test:over").await;
    let done = callbridge::cron::enforce_quotas(&it.t.app.state)
        .await
        .unwrap();
    assert_eq!((done.warned, done.reached, done.announced), (1, 1, 0));
    db.execute(
        "update usage_quota_marks set at = at - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        callbridge::cron::enforce_quotas(&it.t.app.state)
            .await
            .unwrap()
            .ended,
        0
    );
    assert!(it.t.sim.commands_named("hangup").is_empty());
    assert!(it.t.sim.commands_named("speak").is_empty());
    let call = it.call(&id).await;
    assert_eq!(call["status"], "answered");
    assert_eq!(call["usage"]["over_quota"], json!(["monthly_minutes"]));
    // And a new call is refused.
    assert_problem(it.dial().await, 402).await;
}

#[tokio::test]
async fn another_organisations_usage_is_never_visible() {
    let it = spawn_with(&[]).await;
    let db = it.t.app.db().await;
    ledger_row(&db, it.org, "deepl", "characters", 1234.0, "test:ada").await;
    let call_id = Uuid::now_v7();
    db.execute(
        "insert into calls (id, organisation_id, direction, from_number, to_number, status) values ($1, $2, 'outbound', '+14155550100', '+14155550123', 'ended')",
        &[&call_id, &it.org],
    )
    .await
    .unwrap();
    usage::record(
        &db,
        &[Entry::for_call(
            call_id.into(),
            usage::unit::ELEVENLABS,
            usage::unit::CHARACTERS,
            77.0,
            "test:ada-call".into(),
        )],
    )
    .await
    .unwrap();

    let mallory = it.t.app.sign_in("Mallory").await;
    let theirs = it.t.app.organisation_of(&mallory).await;
    let report: Value =
        it.t.app
            .get_as(&mallory, "/api/usage?group_by=call")
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(report["lines"], json!([]));
    // Naming Ada's organisation: not a member, so not found.
    let response =
        it.t.app
            .request_as(Method::GET, &mallory, "/api/usage")
            .header("x-org-id", it.org.to_string())
            .send()
            .await
            .unwrap();
    assert_problem(response, 404).await;
    assert_problem(
        it.t.app
            .get_as(&mallory, &format!("/api/calls/{call_id}"))
            .await,
        404,
    )
    .await;
    let csv =
        it.t.app
            .request_as(Method::GET, &mallory, "/api/usage?format=csv")
            .header("x-org-id", theirs.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert_eq!(csv, "group,vendor,unit,quantity,currency,estimated_cost\n");
    // While Ada sees hers, per call and as CSV.
    let csv =
        it.t.app
            .request_as(Method::GET, &it.ada, "/api/usage?group_by=call")
            .header("accept", "text/csv")
            .send()
            .await
            .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(
        csv.contains(&format!("{call_id},elevenlabs,characters,77,USD,")),
        "{csv}"
    );
    assert!(csv.contains(",deepl,characters,1234,USD,0.030850"), "{csv}");
}

#[tokio::test]
async fn the_report_validates_its_period() {
    let it = spawn_with(&[]).await;
    let bad = |path: &'static str| it.t.app.get_as(&it.ada, path);
    assert_problem(
        bad("/api/usage?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z").await,
        422,
    )
    .await;
    assert_problem(
        bad("/api/usage?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z").await,
        422,
    )
    .await;
    assert_problem(bad("/api/usage?group_by=week").await, 400).await;
    assert_problem(bad("/api/usage?from=yesterday").await, 400).await;
}

#[tokio::test]
async fn the_ledger_writes_each_source_event_once_and_never_rewrites_a_row() {
    let it = spawn_with(&[]).await;
    let db = it.t.app.db().await;
    ledger_row(&db, it.org, "deepl", "characters", 10.0, "test:once").await;
    ledger_row(&db, it.org, "deepl", "characters", 99.0, "test:once").await;
    let rows: Vec<f64> = db
        .query(
            "select quantity::float8 from usage_ledger where source_key = 'test:once'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("quantity"))
        .collect();
    assert_eq!(rows, [10.0]);
    let refused = db
        .execute(
            "update usage_ledger set quantity = 0 where source_key = 'test:once'",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("append-only")
            || format!("{refused:?}").contains("append-only")
    );
}

#[tokio::test]
async fn assemblyai_drift_above_the_threshold_is_reported_once() {
    let it = spawn_with(&[]).await;
    let db = it.t.app.db().await;
    let session = |id: &str, reported: Option<f64>, measured: f64| Entry {
        owner: Owner::Organisation {
            organisation_id: it.org.into(),
            user_id: None,
        },
        vendor: usage::unit::ASSEMBLYAI,
        unit: usage::unit::STREAMING_SECONDS,
        quantity: reported.unwrap_or(measured),
        source_key: format!("assemblyai:session:{id}"),
        occurred_at: chrono::Utc::now(),
        metadata: json!({"session_id": id, "reported_seconds": reported, "measured_seconds": measured}),
    };
    usage::record(
        &db,
        &[
            session("close", Some(60.0), 61.2),
            session("far", Some(60.0), 75.0),
            session("unreported", None, 30.0),
        ],
    )
    .await
    .unwrap();
    assert_eq!(reconcile::run(&db, 5.0).await.unwrap(), 2);
    assert_eq!(reconcile::run(&db, 5.0).await.unwrap(), 0);
    let found: Vec<(String, Option<f64>)> = db
        .query(
            "select session_id, reported_seconds::float8 from usage_drift where organisation_id = $1 order by session_id",
            &[&it.org],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("session_id"), r.get("reported_seconds")))
        .collect();
    assert_eq!(
        found,
        [
            ("far".to_owned(), Some(60.0)),
            ("unreported".to_owned(), None)
        ]
    );
}
