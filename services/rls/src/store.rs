//! Redis access: a `ConnectionManager` (multiplexed, reconnects by itself after a lost
//! connection) created in the background until Redis first answers, every call bounded by the
//! response timeout.

use crate::limiter::{parse_outcome, Outcome, Plan, SCRIPT};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Each connection attempt.
    pub connect: Duration,
    /// Each command (the whole call, including waiting for a reconnect).
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(50),
            response: Duration::from_millis(50),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    script: Arc<redis::Script>,
    timeouts: Timeouts,
}

#[derive(Debug)]
pub enum StoreError {
    /// No connection yet (Redis has not answered since start).
    NotConnected,
    Timeout,
    Redis(redis::RedisError),
    /// The script answered something unexpected.
    Protocol(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotConnected => write!(f, "not connected to Redis"),
            StoreError::Timeout => write!(f, "Redis did not answer in time"),
            StoreError::Redis(e) => write!(f, "Redis: {e}"),
            StoreError::Protocol(e) => write!(f, "unexpected script answer: {e}"),
        }
    }
}

impl Store {
    /// Starts connecting in the background (retrying every 100 ms until the first success;
    /// after that the connection manager reconnects on its own).
    pub fn connect(url: &str, timeouts: Timeouts) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
        let store = Store {
            conn: Arc::new(RwLock::new(None)),
            script: Arc::new(redis::Script::new(SCRIPT)),
            timeouts,
        };
        let slot = store.conn.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeouts.connect)
            .set_response_timeout(timeouts.response)
            // No retries inside a reconnect (backon's backoff starts at a second): a failed
            // attempt fails the waiting calls at once, and the next call starts a new attempt.
            .set_number_of_retries(0)
            .set_max_delay(100);
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                let attempt = tokio::time::timeout(
                    timeouts.connect * 4,
                    ConnectionManager::new_with_config(client.clone(), config.clone()),
                )
                .await;
                match attempt {
                    Ok(Ok(manager)) => {
                        if let Ok(mut slot) = slot.write() {
                            *slot = Some(manager);
                        }
                        eprintln!("switchyard-rls: connected to Redis");
                        return;
                    }
                    Ok(Err(e)) if !logged => {
                        eprintln!("switchyard-rls: Redis not reachable yet ({e}); retrying");
                        logged = true;
                    }
                    Err(_) if !logged => {
                        eprintln!("switchyard-rls: Redis connection timed out; retrying");
                        logged = true;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(store)
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(StoreError::NotConnected)
    }

    /// One round trip: the script over every limited descriptor of the plan.
    pub async fn evaluate(&self, plan: &Plan) -> Result<Outcome, StoreError> {
        let mut conn = self.manager()?;
        let (keys, args) = plan.script_args();
        let mut invocation = self.script.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        for a in &args {
            invocation.arg(*a);
        }
        let values: Vec<i64> =
            tokio::time::timeout(self.timeouts.response, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(StoreError::Redis)?;
        parse_outcome(&values, plan.items.len())
            .ok_or_else(|| StoreError::Protocol(format!("{values:?}")))
    }

    /// PING within the response timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.manager()?;
        let pong: String = tokio::time::timeout(
            self.timeouts.response,
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(StoreError::Redis)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(pong))
        }
    }
}
