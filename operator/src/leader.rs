//! Leader election on a `coordination.k8s.io` Lease, so two replicas of the
//! operator never act at once: only the holder reconciles. The holder
//! renews the lease every `renew`; another replica takes it over once it
//! has not been renewed for `duration`. A holder that fails to renew
//! within `duration` stops acting (the process exits and restarts as a
//! follower), so it never acts on a lease someone else may hold.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::Error;

/// One contender for one lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// What a contender found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This contender holds the lease (acquired or renewed).
    Held,
    /// Someone else holds it, unexpired.
    HeldBy(String),
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            holder: holder.into(),
            duration,
        }
    }

    fn secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Acquires the lease if free or expired, renews it if held.
    pub async fn try_acquire_or_renew(&self) -> Result<Outcome, Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.holder.clone()),
                    lease_duration_seconds: Some(self.secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Held),
                // Another contender created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Outcome::HeldBy("another contender".into()))
                }
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.holder;
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let secs = spec.lease_duration_seconds.unwrap_or(self.secs());
            t.0 + SignedDuration::from_secs(i64::from(secs)) < now
        });
        if !ours && !expired && !holder.is_empty() {
            return Ok(Outcome::HeldBy(holder));
        }
        let mut next = lease.clone();
        let mut s = spec;
        if !ours {
            s.holder_identity = Some(self.holder.clone());
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
        }
        s.renew_time = Some(MicroTime(now));
        s.lease_duration_seconds = Some(self.secs());
        next.spec = Some(s);
        // The resourceVersion from the read makes this conditional: if
        // another contender wrote in between, ours is refused.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Outcome::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::HeldBy(holder)),
            Err(e) => Err(e.into()),
        }
    }
}
