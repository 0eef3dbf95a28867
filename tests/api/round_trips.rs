//! What a request costs PostgreSQL, counted on the wire (issue 15 item 9): `GET /api/calls`
//! is one round trip and one statement whether its session is cached or not
//! (docs/adr/0038-one-round-trip-per-request.md). A proxy between the service and
//! PostgreSQL records every round trip (`common::pg_wire`), so the count does not depend on
//! how loaded the machine is.

use crate::common;

use common::TestApp;
use common::authjs::Session;
use common::pg_wire::{PgWire, RoundTrip};
use serde_json::Value;

/// The round trips that served `GET /api/calls`: those that looked up a session or read a
/// page of calls (the service's background work touches neither).
fn request_trips(trips: &[RoundTrip]) -> Vec<&RoundTrip> {
    trips
        .iter()
        .filter(|trip| {
            trip.iter().any(|sql| {
                sql.contains("\"sessionToken\"")
                    || sql.contains("order by created_at desc, id desc")
            })
        })
        .collect()
}

struct Counted {
    app: TestApp,
    wire: PgWire,
    database: String,
    ada: Session,
    shared: uuid::Uuid,
    outsider: uuid::Uuid,
}

/// Ada with 60 calls in her personal organisation and 3 in a shared one, and an
/// organisation she is not in; the service reaches PostgreSQL through the counting proxy.
async fn counted(overrides: &[(&str, &str)]) -> Counted {
    let database = common::fresh_database().await;
    let wire = PgWire::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/{database}", wire.address);
    let mut settings = vec![("DATABASE_URL", url.as_str())];
    settings.extend_from_slice(overrides);
    let app = TestApp::spawn_with(&settings).await;
    let ada = app.sign_in("Ada").await;
    // The first request makes her personal organisation.
    assert_eq!(app.get_as(&ada, "/api/calls").await.status(), 200);
    let db = app.db().await;
    let personal: uuid::Uuid = db
        .query_one(
            "select id from organisations where personal_owner_id = $1",
            &[&ada.user_id],
        )
        .await
        .unwrap()
        .get(0);
    let (shared, outsider) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (org, name) in [(shared, "Shared"), (outsider, "Outsiders")] {
        db.execute(
            "insert into organisations (id, name) values ($1, $2)",
            &[&org, &name],
        )
        .await
        .unwrap();
    }
    db.execute(
        "insert into memberships (organisation_id, user_id, role) values ($1, $2, 'member')",
        &[&shared, &ada.user_id],
    )
    .await
    .unwrap();
    for (org, count) in [(personal, 60), (shared, 3), (outsider, 2)] {
        db.execute(
            "insert into calls (id, organisation_id, direction, from_number, to_number, status, created_at)
             select gen_random_uuid(), $1, 'outbound', '+14155550100', '+14155550123', 'ended',
                    now() - (g || ' seconds')::interval
             from generate_series(1, $2) g",
            &[&org, &count],
        )
        .await
        .unwrap();
    }
    app.state.sessions.forget_user(&ada.user_id);
    Counted {
        app,
        wire,
        database,
        ada,
        shared,
        outsider,
    }
}

async fn page(app: &TestApp, session: &Session, org: Option<uuid::Uuid>) -> (u16, Value) {
    let mut request = app
        .client
        .get(app.url("/api/calls"))
        .header("cookie", format!("authjs.session-token={}", session.token));
    if let Some(org) = org {
        request = request.header("x-org-id", org.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const REQUESTS: usize = 20;

#[tokio::test]
async fn listing_calls_without_the_session_cache_is_one_round_trip() {
    let it = counted(&[("AUTH_SESSION_CACHE_TTL_SECS", "0")]).await;
    // Each pooled connection prepares a statement once; count after that.
    for _ in 0..3 {
        page(&it.app, &it.ada, None).await;
    }
    it.wire.reset();
    for _ in 0..REQUESTS {
        let (status, body) = page(&it.app, &it.ada, None).await;
        assert_eq!(status, 200);
        assert_eq!(body["calls"].as_array().unwrap().len(), 50);
        assert!(body["next_cursor"].is_string());
    }
    let trips = it.wire.trips();
    let served = request_trips(&trips);
    assert_eq!(
        served.len(),
        REQUESTS,
        "one round trip per request, not {} for {REQUESTS}: {served:#?}",
        served.len()
    );
    assert!(
        served.iter().all(|trip| trip.len() == 1),
        "one statement each: {served:#?}"
    );

    // The organisation a request names rides in the same statement; one it is not a
    // member of is 404 without another round trip, and never answers its calls.
    it.wire.reset();
    let (status, body) = page(&it.app, &it.ada, Some(it.shared)).await;
    assert_eq!(status, 200);
    let calls = body["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|call| call["organisation_id"] == it.shared.to_string())
    );
    let (status, body) = page(&it.app, &it.ada, Some(it.outsider)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(request_trips(&it.wire.trips()).len(), 2);
    common::drop_database_blocking(&it.database);
}

#[tokio::test]
async fn listing_calls_with_the_session_cache_is_one_round_trip_too() {
    let it = counted(&[("AUTH_SESSION_CACHE_TTL_SECS", "60")]).await;
    for _ in 0..3 {
        page(&it.app, &it.ada, None).await;
    }
    it.wire.reset();
    for _ in 0..REQUESTS {
        assert_eq!(page(&it.app, &it.ada, None).await.0, 200);
    }
    let trips = it.wire.trips();
    let served = request_trips(&trips);
    assert_eq!(served.len(), REQUESTS, "{served:#?}");
    assert!(
        served
            .iter()
            .all(|trip| trip.len() == 1 && !trip[0].contains("\"sessionToken\"")),
        "a cache hit reads only the page: {served:#?}"
    );
    common::drop_database_blocking(&it.database);
}

/// The rows of a page that rides on the session lookup come back unsorted from the statement
/// (it has no outer sort: docs/adr/0048-cheaper-one-round-trip-page.md); the answer is still
/// newest first, and walking the cursor visits every call once, in the order PostgreSQL
/// sorts them, one round trip a page.
#[tokio::test]
async fn a_ridden_page_walks_every_call_newest_first() {
    let it = counted(&[("AUTH_SESSION_CACHE_TTL_SECS", "0")]).await;
    let db = it.app.db().await;
    let expected: Vec<String> = db
        .query(
            "select c.id::text from calls c join organisations o on o.id = c.organisation_id
             where o.personal_owner_id = $1 order by c.created_at desc, c.id desc",
            &[&it.ada.user_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(expected.len(), 60);
    for _ in 0..3 {
        page(&it.app, &it.ada, None).await;
    }
    it.wire.reset();
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let url = match &cursor {
            Some(cursor) => format!("/api/calls?limit=25&cursor={cursor}"),
            None => "/api/calls?limit=25".to_owned(),
        };
        let response = it
            .app
            .client
            .get(it.app.url(&url))
            .header("cookie", format!("authjs.session-token={}", it.ada.token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        pages += 1;
        seen.extend(
            body["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|call| call["id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
    assert_eq!(request_trips(&it.wire.trips()).len(), pages);
    common::drop_database_blocking(&it.database);
}

/// The service's pooled connections plan with `DATABASE_RANDOM_PAGE_COST` (1.1 unless set),
/// except behind a transaction-mode pooler, where a session setting would outlive the
/// transaction on a server connection other clients share.
#[tokio::test]
async fn pooled_connections_plan_for_pages_in_memory() {
    async fn setting(overrides: &[(&str, &str)]) -> String {
        let app = TestApp::spawn_with(overrides).await;
        let client = app.state.db.client().await.unwrap();
        let rows = client.simple_query("show random_page_cost").await.unwrap();
        rows.iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap()
    }
    assert_eq!(setting(&[]).await, "1.1");
    assert_eq!(
        setting(&[("DATABASE_RANDOM_PAGE_COST", "2.5")]).await,
        "2.5"
    );
    let server = setting(&[("DATABASE_RANDOM_PAGE_COST", "0")]).await;
    assert_eq!(
        setting(&[("DATABASE_STATEMENT_CACHE", "false")]).await,
        server,
        "behind a transaction-mode pooler the server's own setting stays"
    );
    assert_ne!(
        server, "1.1",
        "the cluster's own setting must differ for this test to mean anything"
    );
}
