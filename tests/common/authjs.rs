//! Users and sessions created exactly as `@auth/pg-adapter` creates them: `createUser` and
//! `createSession` SQL, the token a random UUID stored as is, and the cookie value
//! `encodeURIComponent(token)` (a UUID encodes to itself).

use chrono::{DateTime, Duration, Utc};

use super::TestApp;

pub struct Session {
    pub user_id: String,
    pub token: String,
}

impl TestApp {
    /// The adapter's `createUser`.
    pub async fn create_user(&self, name: &str, email: &str) -> String {
        let row = self
            .db()
            .await
            .query_one(
                r#"insert into authjs.users (name, email, "emailVerified", image) values ($1, $2, $3, $4)
                   returning id, name, email, "emailVerified", image"#,
                &[&name, &email, &None::<DateTime<Utc>>, &None::<String>],
            )
            .await
            .unwrap();
        row.get::<_, i32>("id").to_string()
    }

    /// The adapter's `createSession`, with the token stored as given.
    pub async fn create_session(&self, user_id: &str, stored_token: &str, expires: DateTime<Utc>) {
        let user_id: i32 = user_id.parse().unwrap();
        self.db()
            .await
            .execute(
                r#"insert into authjs.sessions ("userId", expires, "sessionToken") values ($1, $2, $3)
                   returning id, "sessionToken", "userId", expires"#,
                &[&user_id, &expires, &stored_token],
            )
            .await
            .unwrap();
    }

    /// A new user signed in for 30 days (Auth.js's default `maxAge`).
    pub async fn sign_in(&self, name: &str) -> Session {
        let email = format!(
            "{}-{}@example.com",
            name.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let user_id = self.create_user(name, &email).await;
        let token = uuid::Uuid::new_v4().to_string();
        self.create_session(&user_id, &token, Utc::now() + Duration::days(30))
            .await;
        Session { user_id, token }
    }

    /// The adapter's `deleteSession` (sign-out).
    pub async fn delete_session(&self, stored_token: &str) {
        self.db()
            .await
            .execute(
                r#"delete from authjs.sessions where "sessionToken" = $1"#,
                &[&stored_token],
            )
            .await
            .unwrap();
    }

    /// GET with the session in the newest Auth.js cookie.
    pub async fn get_as(&self, session: &Session, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("cookie", format!("authjs.session-token={}", session.token))
            .send()
            .await
            .unwrap()
    }

    /// A cookie-authenticated request from the frontend's origin.
    pub fn request_as(
        &self,
        method: reqwest::Method,
        session: &Session,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("cookie", format!("authjs.session-token={}", session.token))
            .header("origin", "https://app.example.com")
    }

    /// `GET /api/me` as `session`.
    pub async fn me(&self, session: &Session) -> serde_json::Value {
        self.get_as(session, "/api/me").await.json().await.unwrap()
    }

    /// The session's first organisation (`/api/me`): a new user's personal one.
    pub async fn organisation_of(&self, session: &Session) -> uuid::Uuid {
        self.me(session).await["organisations"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The session's user's email (`/api/me`).
    pub async fn email_of(&self, session: &Session) -> String {
        self.me(session).await["user"]["email"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
