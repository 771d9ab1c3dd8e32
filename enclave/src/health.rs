//! `grpc.health.v1.Health`: Check and Watch over a fixed set of named statuses.
//!
//! | name | SERVING when |
//! |---|---|
//! | `autoscaler-healthcheck` | from start until shutdown (the process is alive) |
//! | `loadbalancer-healthcheck` | once the initial data load has finished, until shutdown |
//! | `""` (the whole server), `kv_server.v1.KeyValueService` | same as `loadbalancer-healthcheck` |
//! | `kv-data-freshness` | the last poll that handled every listed data file is at most `max_staleness` old, until shutdown |
//!
//! The names are those the reference server reports, so autoscaling and load balancer health
//! checks configured for it keep working. An unknown name is NOT_FOUND for Check and
//! SERVICE_UNKNOWN for Watch (as the protocol says). Watch streams end when the server drains.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::proto::grpc::health::v1::health_server::{self, HealthServer};
use crate::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

pub const AUTOSCALER: &str = "autoscaler-healthcheck";
pub const LOADBALANCER: &str = "loadbalancer-healthcheck";
pub const KEY_VALUE_SERVICE: &str = "kv_server.v1.KeyValueService";
/// Whether the data is in sync with the source (for alarms: the load balancer's check does not
/// follow it, so an unreachable source does not take the whole fleet out of service).
pub const DATA_FRESHNESS: &str = "kv-data-freshness";

/// Which statuses follow the data load.
const FOLLOW_LOAD: [&str; 3] = ["", LOADBALANCER, KEY_VALUE_SERVICE];

#[derive(Debug)]
pub struct Health {
    statuses: HashMap<&'static str, watch::Sender<ServingStatus>>,
    draining: watch::Sender<bool>,
    /// (data loaded, HPKE keys ready): serving needs both.
    ready: std::sync::Mutex<(bool, bool)>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// The state at start: alive, data not loaded yet.
    pub fn new() -> Health {
        let mut statuses = HashMap::new();
        statuses.insert(AUTOSCALER, watch::channel(ServingStatus::Serving).0);
        for name in FOLLOW_LOAD.into_iter().chain([DATA_FRESHNESS]) {
            statuses.insert(name, watch::channel(ServingStatus::NotServing).0);
        }
        Health { statuses, draining: watch::channel(false).0, ready: std::sync::Mutex::new((false, true)) }
    }

    /// As [`Health::new`], but also waiting for the fleet key set ([`Health::set_keys_ready`])
    /// before serving: an enclave without keys cannot answer encrypted lookups.
    pub fn new_waiting_for_keys() -> Health {
        let health = Health::new();
        health.ready.lock().unwrap_or_else(|e| e.into_inner()).1 = false;
        health
    }

    /// The initial data load finished: ready for traffic (once the keys are, if awaited).
    pub fn set_data_loaded(&self) {
        self.mark(|ready| ready.0 = true, "initial data load finished");
    }

    /// The fleet key set is installed.
    pub fn set_keys_ready(&self) {
        self.mark(|ready| ready.1 = true, "fleet key set loaded");
    }

    fn mark(&self, set: impl FnOnce(&mut (bool, bool)), what: &str) {
        if *self.draining.borrow() {
            return;
        }
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let before = *ready;
        set(&mut ready);
        match *ready {
            (true, true) if before != (true, true) => {
                for name in FOLLOW_LOAD {
                    self.statuses[name].send_replace(ServingStatus::Serving);
                }
                tracing::info!("{what}; {LOADBALANCER} is SERVING");
            }
            (true, true) => {}
            (data, keys) => tracing::info!(
                data_loaded = data,
                keys_ready = keys,
                "{what}; {LOADBALANCER} stays NOT_SERVING until both"
            ),
        }
    }

    /// Whether the data is in sync with its source (`kv-data-freshness`); logs each change.
    pub fn set_data_fresh(&self, fresh: bool) {
        if *self.draining.borrow() {
            return;
        }
        let status = if fresh { ServingStatus::Serving } else { ServingStatus::NotServing };
        let previous = self.statuses[DATA_FRESHNESS].send_replace(status);
        if previous != status {
            if fresh {
                tracing::info!("data in sync with its source: {DATA_FRESHNESS} is SERVING");
            } else {
                tracing::warn!(
                    "data not in sync with its source for longer than max_staleness: {DATA_FRESHNESS} is NOT_SERVING"
                );
            }
        }
    }

    /// Shutdown began: everything NOT_SERVING, and open Watch streams end.
    pub fn set_draining(&self) {
        for sender in self.statuses.values() {
            sender.send_replace(ServingStatus::NotServing);
        }
        self.draining.send_replace(true);
    }

    /// The current status of `service`, or `None` if the name is unknown.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.statuses.get(service).map(|s| *s.borrow())
    }

    pub fn into_service(self: Arc<Self>) -> HealthServer<HealthService> {
        HealthServer::new(HealthService { health: self })
    }
}

pub struct HealthService {
    health: Arc<Health>,
}

type WatchResult = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.health.status(&service) {
            Some(status) => Ok(Response::new(HealthCheckResponse { status: status as i32 })),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = WatchResult;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchResult>, Status> {
        let service = request.into_inner().service;
        let mut draining = self.health.draining.subscribe();
        let until_drain = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        let updates: WatchResult = match self.health.statuses.get(service.as_str()) {
            Some(sender) => Box::pin(
                WatchStream::new(sender.subscribe())
                    .map(|status| Ok(HealthCheckResponse { status: status as i32 }))
                    .take_until(until_drain),
            ),
            None => Box::pin(
                futures::stream::once(async {
                    Ok(HealthCheckResponse { status: ServingStatus::ServiceUnknown as i32 })
                })
                .chain(futures::stream::pending())
                .take_until(until_drain),
            ),
        };
        Ok(Response::new(updates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_fleet_keys_serving_waits_for_the_data_and_the_keys() {
        for keys_first in [false, true] {
            let health = Health::new_waiting_for_keys();
            if keys_first {
                health.set_keys_ready();
            } else {
                health.set_data_loaded();
            }
            assert_eq!(
                health.status(LOADBALANCER),
                Some(ServingStatus::NotServing),
                "keys first: {keys_first}"
            );
            if keys_first {
                health.set_data_loaded();
            } else {
                health.set_keys_ready();
            }
            assert_eq!(health.status(LOADBALANCER), Some(ServingStatus::Serving));
            assert_eq!(health.status(KEY_VALUE_SERVICE), Some(ServingStatus::Serving));
        }
        let health = Health::new();
        health.set_data_loaded();
        assert_eq!(
            health.status(LOADBALANCER),
            Some(ServingStatus::Serving),
            "without fleet keys: the data alone"
        );
    }
    use crate::proto::grpc::health::v1::health_server::Health as _;

    async fn check(service: &HealthService, name: &str) -> Result<ServingStatus, tonic::Code> {
        service
            .check(Request::new(HealthCheckRequest { service: name.into() }))
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn statuses_follow_the_load_and_the_drain() {
        let health = Arc::new(Health::new());
        let service = HealthService { health: health.clone() };
        assert_eq!(check(&service, AUTOSCALER).await, Ok(ServingStatus::Serving));
        assert_eq!(check(&service, LOADBALANCER).await, Ok(ServingStatus::NotServing));
        assert_eq!(check(&service, "").await, Ok(ServingStatus::NotServing));
        assert_eq!(check(&service, "nope").await, Err(tonic::Code::NotFound));

        let mut watch = service
            .watch(Request::new(HealthCheckRequest { service: LOADBALANCER.into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        health.set_data_loaded();
        assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
        assert_eq!(check(&service, KEY_VALUE_SERVICE).await, Ok(ServingStatus::Serving));

        health.set_draining();
        assert_eq!(check(&service, AUTOSCALER).await, Ok(ServingStatus::NotServing));
        // The stream reports the change or ends; either way it does not hang.
        while let Some(item) = watch.next().await {
            assert_eq!(item.unwrap().status(), ServingStatus::NotServing);
        }
        health.set_data_loaded();
        assert_eq!(check(&service, LOADBALANCER).await, Ok(ServingStatus::NotServing), "stays down");
    }

    #[tokio::test]
    async fn watch_of_an_unknown_name_says_service_unknown() {
        let service = HealthService { health: Arc::new(Health::new()) };
        let mut watch = service
            .watch(Request::new(HealthCheckRequest { service: "x".into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::ServiceUnknown);
    }
}
