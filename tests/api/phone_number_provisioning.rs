//! Phone numbers come from the platform's Telnyx account (issue 14 item 1), against the
//! Telnyx simulator: a number outside the account is refused, another tenant's number gets
//! the same answer as one nobody can have, search shows only claimable numbers, ordering
//! buys onto the platform's connection, and the per-organisation cap holds under concurrency.
#![cfg(feature = "sim")]

use crate::common;

use callbridge::sim::telnyx::Fault;
use common::assert_problem;
use common::authjs::Session;
use common::telnyx::TelnyxApp;
use reqwest::Method;
use serde_json::{Value, json};

async fn claim(t: &TelnyxApp, who: &Session, number: &str) -> reqwest::Response {
    t.app
        .request_as(Method::POST, who, "/api/phone-numbers")
        .json(&json!({"number": number, "label": "desk"}))
        .send()
        .await
        .unwrap()
}

async fn numbers_of(t: &TelnyxApp, who: &Session) -> Vec<String> {
    let list: Value = t
        .app
        .get_as(who, "/api/phone-numbers")
        .await
        .json()
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n["number"].as_str().unwrap().to_owned())
        .collect()
}

/// The problem without what differs per request.
fn comparable(mut problem: Value) -> Value {
    problem.as_object_mut().unwrap().remove("request_id");
    problem
}

#[tokio::test]
async fn a_number_outside_the_telnyx_account_cannot_be_claimed() {
    let t = TelnyxApp::spawn().await;
    let mallory = t.app.sign_in("Mallory").await;
    // Someone else's real-looking number: not in the account, not for sale.
    let problem = assert_problem(claim(&t, &mallory, "+14155559999").await, 422).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:number-unavailable");
    assert_eq!(problem["rule"], "number-available");
    assert!(numbers_of(&t, &mallory).await.is_empty());
    assert!(
        t.sim.commands_named("order_numbers").is_empty(),
        "nothing bought"
    );
    // A number held by the account but attached to another connection (another product or
    // environment on the same account) is not the platform's to give either.
    t.sim
        .hold_number("+14155550177", Some("staging-connection"));
    assert_problem(claim(&t, &mallory, "+14155550177").await, 422).await;
    assert!(numbers_of(&t, &mallory).await.is_empty());
}

#[tokio::test]
async fn another_tenants_number_gets_the_same_answer_as_an_unavailable_one() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let eve = t.app.sign_in("Eve").await;
    t.own_number(&ada, "+14155550100").await;

    let before = t.sim.commands().len();
    let taken = assert_problem(claim(&t, &eve, "+14155550100").await, 422).await;
    let between = t.sim.commands().len();
    let nobodys = assert_problem(claim(&t, &eve, "+14155559999").await, 422).await;
    let after = t.sim.commands().len();
    assert_eq!(
        comparable(taken),
        comparable(nobodys),
        "held by another organisation and not available must be indistinguishable"
    );
    // Same Telnyx look-ups for both, so timing does not tell them apart either.
    let actions = |range: std::ops::Range<usize>| -> Vec<String> {
        t.sim.commands()[range]
            .iter()
            .map(|c| c.action.clone())
            .collect()
    };
    assert_eq!(actions(before..between), actions(between..after));
    assert_eq!(actions(before..between), ["list_numbers", "search_numbers"]);
    assert!(numbers_of(&t, &eve).await.is_empty());
    assert_eq!(numbers_of(&t, &ada).await, ["+14155550100"]);
    // Ada claiming her own number again is a plain conflict (it is hers to know).
    assert_problem(claim(&t, &ada, "+14155550100").await, 409).await;
}

#[tokio::test]
async fn search_offers_the_pool_then_telnyx_and_never_another_tenants_number() {
    let t = TelnyxApp::spawn().await;
    let ada = t.app.sign_in("Ada").await;
    let eve = t.app.sign_in("Eve").await;
    for number in ["+14155550150", "+14155550151"] {
        t.sim.hold_number(number, Some("sim-connection"));
    }
    t.sim
        .hold_number("+14155550152", Some("staging-connection"));
    assert_eq!(claim(&t, &ada, "+14155550150").await.status(), 201);

    let offers: Value = t
        .app
        .get_as(
            &eve,
            "/api/phone-numbers/available?country=us&area_code=415&limit=5",
        )
        .await
        .json()
        .await
        .unwrap();
    let offers = offers.as_array().unwrap();
    let numbers: Vec<&str> = offers
        .iter()
        .map(|o| o["phone_number"].as_str().unwrap())
        .collect();
    assert_eq!(offers.len(), 5, "{offers:?}");
    assert_eq!(numbers[0], "+14155550151", "the pool first");
    assert_eq!(offers[0]["source"], "account");
    assert!(offers[0]["monthly_cost"].is_null());
    assert!(
        offers[1..]
            .iter()
            .all(|o| o["source"] == "order" && o["monthly_cost"] == "1.00" && o["country"] == "US")
    );
    assert!(numbers.iter().all(|n| n.starts_with("+1415")));
    assert!(
        !numbers.contains(&"+14155550150"),
        "Ada's number is not offered"
    );
    assert!(
        !numbers.contains(&"+14155550152"),
        "another connection's is not"
    );

    // No exact match: Telnyx answers best-effort numbers, which are not offered as matches.
    let none: Value = t
        .app
        .get_as(
            &eve,
            "/api/phone-numbers/available?country=US&area_code=907",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!([]));

    assert_problem(
        t.app
            .get_as(&eve, "/api/phone-numbers/available?country=XX")
            .await,
        422,
    )
    .await;
    assert_problem(
        t.app
            .get_as(
                &eve,
                "/api/phone-numbers/available?country=US&area_code=41a&limit=0",
            )
            .await,
        422,
    )
    .await;
    assert_problem(
        t.app.get_as(&eve, "/api/phone-numbers/available").await,
        400,
    )
    .await;

    // Released numbers go back to the pool.
    let adas: Value = t
        .app
        .get_as(&ada, "/api/phone-numbers")
        .await
        .json()
        .await
        .unwrap();
    let id = adas[0]["id"].as_str().unwrap();
    assert_eq!(
        t.app
            .request_as(Method::DELETE, &ada, &format!("/api/phone-numbers/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(claim(&t, &eve, "+14155550150").await.status(), 201);
}

#[tokio::test]
async fn a_number_for_sale_is_ordered_onto_the_platform_connection() {
    let t = TelnyxApp::spawn().await;
    let eve = t.app.sign_in("Eve").await;
    let offers: Value = t
        .app
        .get_as(&eve, "/api/phone-numbers/available?country=GB")
        .await
        .json()
        .await
        .unwrap();
    let wanted = offers[0]["phone_number"].as_str().unwrap().to_owned();
    assert!(wanted.starts_with("+44"));
    let response = claim(&t, &eve, &wanted).await;
    assert_eq!(response.status(), 201);
    let number: Value = response.json().await.unwrap();
    assert_eq!(number["number"], wanted.as_str());
    assert_eq!(number["source"], "order");
    assert_eq!(number["label"], "desk");

    let orders = t.sim.commands_named("order_numbers");
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].body["connection_id"], "sim-connection");
    assert_eq!(
        orders[0].body["phone_numbers"][0]["phone_number"],
        wanted.as_str()
    );
    assert_eq!(
        orders[0].body["customer_reference"],
        t.app.organisation_of(&eve).await.to_string().as_str()
    );
    let held = t.sim.held_numbers();
    assert!(
        held.iter()
            .any(|n| n.phone_number == wanted
                && n.connection_id.as_deref() == Some("sim-connection"))
    );
    // The order's id is kept for reconciliation.
    let order_id: Option<String> = t
        .app
        .db()
        .await
        .query_one(
            "select telnyx_order_id from phone_numbers where e164 = $1",
            &[&wanted],
        )
        .await
        .unwrap()
        .get("telnyx_order_id");
    assert!(order_id.is_some());

    // An order is sent once, never retried (a retry could buy twice): a 503 on it is a 502
    // once the account confirms it does not hold the number, and nothing is stored.
    t.sim.inject(Fault::Delay(std::time::Duration::ZERO)); // the account look-up
    t.sim.inject(Fault::Delay(std::time::Duration::ZERO)); // the market look-up
    t.sim.inject(Fault::Status(503)); // the order
    let problem = assert_problem(claim(&t, &eve, "+14155550202").await, 502).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:provider-failed");
    assert_eq!(
        t.sim.commands_named("order_numbers").len(),
        2,
        "one more, not three"
    );
    assert_eq!(
        t.sim.commands().last().map(|c| c.action.as_str()),
        Some("list_numbers"),
        "the account was asked after the ambiguous failure"
    );

    // A Telnyx outage during the look-up is a 502, nothing stored.
    for _ in 0..3 {
        t.sim.inject(Fault::Status(503));
    }
    let problem = assert_problem(claim(&t, &eve, "+14155550201").await, 502).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:provider-failed");
    assert_eq!(numbers_of(&t, &eve).await, [wanted]);
}

#[tokio::test]
async fn the_per_organisation_cap_holds_under_concurrent_claims() {
    let t = TelnyxApp::spawn_with(&[("PHONE_NUMBERS_MAX_PER_ORG", "2")]).await;
    let ada = t.app.sign_in("Ada").await;
    t.app.organisation_of(&ada).await;
    let pool: Vec<String> = (0..5).map(|i| format!("+1415555016{i}")).collect();
    for number in &pool {
        t.sim.hold_number(number, Some("sim-connection"));
    }
    let responses =
        futures_util::future::join_all(pool.iter().map(|number| claim(&t, &ada, number))).await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 403, 403, 403]);
    let refused = responses.into_iter().find(|r| r.status() == 403).unwrap();
    let problem = assert_problem(refused, 403).await;
    assert_eq!(problem["type"], "urn:callbridge:problem:number-limit");
    assert_eq!(problem["rule"], "phone-numbers-per-org");
    assert_eq!(problem["limit"], 2);
    assert_eq!(numbers_of(&t, &ada).await.len(), 2);
}
