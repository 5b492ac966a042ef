//! Three members in containers of the image on a user-defined Docker
//! network, reaching each other by DNS name (network aliases n0, n1, n2,
//! as a headless Service names pods), with a client on the host writing
//! all along (issue 20, e2e/docker/):
//!
//! 1. the leader's container is killed and removed, and a new one with the
//!    same name, alias and data volume comes back at another IP address
//!    and rejoins under its name;
//! 2. the leader is cut off with `docker network disconnect` (a real
//!    partition): the majority goes on, the cut-off leader serves no
//!    linearizable read or write, and once reconnected it catches up
//!    (equal state digests through `raftkit digest`);
//! 3. no acknowledged increment is lost or doubled (the counter checks of
//!    `raftkit_testkit::load`), and the history of each key of a KV
//!    workload running beside it is linearizable.
//!
//! Each container has two networks: `raft` (internal: only the members,
//! by alias) and `front` (where its port is published on 127.0.0.1 for the
//! host). Cutting `raft` leaves the host's path to the member open, so the
//! test can ask the cut-off leader directly. Skips where no Docker engine
//! answers; everything it made is removed at the end, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use raftkit_client::{ClusterClient, ReadConsistency};
use raftkit_testkit::docker::{self, docker, DockerScope};
use raftkit_testkit::linearizability::{check_register, Event, RegOp, Val};
use raftkit_testkit::load::CounterLoad;
use raftkit_testkit::procs::{free_ports, raft_stat};
use raftkit_testkit::wait_until_async;

const MEMBERS: usize = 3;
/// How long writers may go without progress at a checkpoint.
const PROGRESS: Duration = Duration::from_secs(20);

struct DockerCluster {
    scope: DockerScope,
    image: String,
    raft_net: String,
    front_net: String,
    volumes: Vec<String>,
    /// Host ports, published on 127.0.0.1 to each member's 8080.
    ports: Vec<u16>,
    containers: Vec<String>,
}

impl DockerCluster {
    fn new(image: String) -> Self {
        let scope = DockerScope::new("cluster");
        let raft_net = scope.network("raft", true);
        let front_net = scope.network("front", false);
        let volumes = (0..MEMBERS)
            .map(|i| scope.volume(&format!("data{i}")))
            .collect();
        let containers = (0..MEMBERS).map(|i| scope.name(&format!("n{i}"))).collect();
        DockerCluster {
            scope,
            image,
            raft_net,
            front_net,
            volumes,
            ports: free_ports(MEMBERS),
            containers,
        }
    }

    /// The address the host reaches member `i` at.
    fn host_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    fn host_addrs(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| self.host_addr(i)).collect()
    }

    /// Creates and starts member `i`'s container: published on `front`,
    /// then joined to `raft` under the alias `n<i>`.
    fn start(&self, i: usize) {
        let publish = format!("127.0.0.1:{}:8080", self.ports[i]);
        let volume = format!("{}:/var/lib/raftkit", self.volumes[i]);
        let advertise = format!("n{i}:8080");
        let initial: Vec<String> = (0..MEMBERS).map(|j| format!("n{j}:8080")).collect();
        let initial = initial.join(",");
        let name = self.scope.create(
            &format!("n{i}"),
            &[
                "--network",
                &self.front_net,
                "-p",
                &publish,
                "-v",
                &volume,
                &self.image,
                "--advertise",
                &advertise,
                "--initial-conf",
                &initial,
                "--groups",
                "counter:counter,kv:kv",
                "--election-timeout-ms",
                "1000",
            ],
        );
        self.connect(i);
        docker(&["start", &name]).unwrap();
    }

    fn connect(&self, i: usize) {
        let alias = format!("n{i}");
        docker(&[
            "network",
            "connect",
            "--alias",
            &alias,
            &self.raft_net,
            &self.containers[i],
        ])
        .unwrap();
    }

    fn disconnect(&self, i: usize) {
        docker(&["network", "disconnect", &self.raft_net, &self.containers[i]]).unwrap();
    }

    /// Member `i`'s address on the raft network.
    fn raft_ip(&self, i: usize) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.raft_net
        );
        docker(&["inspect", "--format", &fmt, &self.containers[i]]).unwrap()
    }

    /// Waits for a member that says it leads, among `among`, and that the
    /// others in `among` follow (so a cut-off member's stale claim is not
    /// taken).
    async fn leader_among(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut stats = Vec::new();
            for &i in among {
                stats.push((i, raft_stat(&self.host_addr(i)).await));
            }
            let leader = stats
                .iter()
                .filter_map(|(i, s)| Some((*i, s.as_ref()?[0].clone())))
                .filter(|(_, s)| s["role"] == "leader")
                .max_by_key(|(_, s)| s["term"].as_u64());
            if let Some((l, ls)) = leader {
                let term = ls["term"].as_u64();
                let all_agree = stats.iter().all(|(_, s)| {
                    s.as_ref().is_some_and(|s| {
                        s[0]["term"].as_u64() == term && s[0]["leader"] == ls["peer"]
                    })
                });
                if all_agree {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader that members {among:?} agree on within {within:?}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Keys of the KV workload.
const KEYS: usize = 3;

/// Writers and readers on a few KV keys, recording each operation for the
/// linearizability checker (a put whose outcome is unknown may take effect
/// at any time after it was invoked).
struct KvLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<(usize, Event)>>>,
}

fn parse(v: Option<Bytes>) -> Val {
    v.map(|b| {
        String::from_utf8_lossy(&b)
            .parse()
            .expect("a value the test wrote")
    })
}

impl KvLoad {
    fn start(client: Arc<ClusterClient>, workers: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut history = Vec::new();
                    let mut next = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = rand::random_range(0..KEYS);
                        let key_bytes = Bytes::from(format!("key-{key}"));
                        let invoked = Instant::now();
                        if rand::random_bool(0.5) {
                            let id = (w << 32) | next;
                            next += 1;
                            let r = client.put(key_bytes, Bytes::from(id.to_string())).await;
                            let (completed, prev) = match r {
                                Ok(prev) => (Some(Instant::now()), Some(parse(prev))),
                                Err(e) if e.is_definitely_not_applied() => continue,
                                Err(_) => (None, None),
                            };
                            let op = RegOp::Put { value: id, prev };
                            history.push((
                                key,
                                Event {
                                    invoked,
                                    completed,
                                    op,
                                },
                            ));
                        } else if let Ok(v) = client.get(key_bytes).await {
                            let op = RegOp::Get { value: parse(v) };
                            let completed = Some(Instant::now());
                            history.push((
                                key,
                                Event {
                                    invoked,
                                    completed,
                                    op,
                                },
                            ));
                        }
                    }
                    history
                })
            })
            .collect();
        KvLoad { stop, workers }
    }

    /// Stops the workers and checks each key's history; returns how many
    /// operations were checked.
    async fn stop_and_check(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut per_key: Vec<Vec<Event>> = vec![Vec::new(); KEYS];
        for w in self.workers {
            for (k, e) in w.await.unwrap() {
                per_key[k].push(e);
            }
        }
        for (k, h) in per_key.iter().enumerate() {
            if let Err(e) = check_register(h) {
                panic!("key-{k}: not linearizable: {e}");
            }
        }
        per_key.iter().map(Vec::len).sum()
    }
}

/// `raftkit --output json digest` against every member's host address:
/// (group, applied index, digest) of each group, per member.
fn digests(addrs: &[String]) -> Vec<Option<Vec<(String, u64, String)>>> {
    let o = Command::new(env!("CARGO_BIN_EXE_raftkit"))
        .args(["--cluster", &addrs.join(","), "--output", "json", "digest"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let group = |g: &serde_json::Value| {
        Some((
            g["group"].as_str()?.to_string(),
            g["applied_index"].as_u64()?,
            g["digest"].as_str()?.to_string(),
        ))
    };
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["groups"].as_array()?.iter().map(group).collect())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_in_containers_survive_a_replaced_leader_and_a_partition() {
    let Some(image) = docker::image() else { return };
    let started = Instant::now();
    let c = DockerCluster::new(image);
    for i in 0..MEMBERS {
        c.start(i);
    }
    let all: Vec<usize> = (0..MEMBERS).collect();
    let first = c.leader_among(&all, Duration::from_secs(60)).await;
    eprintln!(
        "cluster formed by DNS names, n{first} leads ({:?})",
        started.elapsed()
    );

    let client =
        Arc::new(ClusterClient::new(c.host_addrs(), "counter", Duration::from_secs(20)).unwrap());
    let load = CounterLoad::start(client.clone(), 3);
    let kv_client =
        Arc::new(ClusterClient::new(c.host_addrs(), "kv", Duration::from_secs(20)).unwrap());
    let kv_load = KvLoad::start(kv_client, 3);
    load.wait_for_progress(50, PROGRESS, "at the start").await;

    // 1. The leader's container dies and is replaced: same name, alias and
    //    volume, another IP address: a container started meanwhile takes
    //    the freed one (Docker hands out the lowest free address), as
    //    another pod would.
    let old_ip = c.raft_ip(first);
    c.scope.remove(&c.containers[first]);
    let squatter = c.scope.create(
        "squatter",
        &[
            "--network",
            &c.raft_net,
            "--entrypoint",
            "/usr/local/bin/raftkit-node",
            &c.image,
            "--listen",
            "127.0.0.1:8080",
            "--data-dir",
            "/tmp/squatter",
        ],
    );
    docker(&["start", &squatter]).unwrap();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    let second = c.leader_among(&others, Duration::from_secs(30)).await;
    load.wait_for_progress(50, PROGRESS, "with the old leader's container gone")
        .await;
    c.start(first);
    let new_ip = c.raft_ip(first);
    assert_ne!(
        new_ip, old_ip,
        "the replacement must come back at another address"
    );
    eprintln!("n{first} replaced: {old_ip} -> {new_ip}; n{second} leads");
    // It rejoins under its name: it follows the leader again and applies
    // what the others applied while it was gone.
    let target = raft_stat(&c.host_addr(second)).await.unwrap()[0]["commit_index"]
        .as_u64()
        .unwrap();
    let rejoined = c.host_addr(first);
    wait_until_async(
        Duration::from_secs(60),
        "the replaced member to catch up",
        || {
            let rejoined = rejoined.clone();
            async move {
                raft_stat(&rejoined).await.is_some_and(|s| {
                    s[0]["role"] == "follower" && s[0]["applied_index"].as_u64() >= Some(target)
                })
            }
        },
    )
    .await;
    let leader = c.leader_among(&all, Duration::from_secs(30)).await;
    load.wait_for_progress(50, PROGRESS, "after the replacement rejoined")
        .await;

    // 2. The leader is cut off from the others.
    c.disconnect(leader);
    eprintln!("n{leader} disconnected from the raft network");
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = c.leader_among(&majority, Duration::from_secs(30)).await;
    load.wait_for_progress(50, PROGRESS, "in the majority")
        .await;
    // The cut-off member, asked directly from the host, serves no
    // linearizable read and acknowledges no write.
    let alone =
        ClusterClient::new(vec![c.host_addr(leader)], "counter", Duration::from_secs(3)).unwrap();
    // It still answers the host (from its local state), so the refusals
    // below come from the partition, not from an unreachable container.
    let stale = alone.counter_get_with(ReadConsistency::Stale).await;
    assert!(
        stale.is_ok(),
        "the cut-off member must still answer the host: {stale:?}"
    );
    let read = alone.counter_get().await;
    assert!(
        read.is_err(),
        "the cut-off leader served a linearizable read: {read:?}"
    );
    let write = alone.fetch_add(1).await;
    assert!(
        write.is_err(),
        "the cut-off leader acknowledged a write: {write:?}"
    );
    let probe_unknown = write
        .as_ref()
        .is_err_and(|e| !e.is_definitely_not_applied());
    c.connect(leader);
    eprintln!("n{leader} reconnected; n{new_leader} leads");
    load.wait_for_progress(50, PROGRESS, "after the partition healed")
        .await;

    // 3. The history holds, and every replica reaches the same state.
    let mut tally = load.stop().await;
    // The probe's write counts as one more write of unknown outcome.
    tally.unknown += u64::from(probe_unknown);
    let total = tally.check(&client).await;
    let kv_ops = kv_load.stop_and_check().await;
    let addrs = c.host_addrs();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = digests(&addrs);
        let agree = d.len() == MEMBERS && d.iter().all(|x| x.is_some() && *x == d[0]);
        if agree {
            eprintln!("digests agree: {:?}", d[0]);
            break;
        }
        assert!(Instant::now() < deadline, "replicas never agreed: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} increments acknowledged, {} failed, final value {total}; {kv_ops} KV operations linearizable; in {:?}",
        tally.acked.len(),
        tally.failed,
        started.elapsed()
    );
}
