//! The storage conformance suite (`raftkit_testkit::conformance`) against
//! the backends the engine ships: `memory://` and `local://`.

raftkit_testkit::storage_conformance_suite!(memory_backend, raftkit_testkit::conformance::memory());
raftkit_testkit::storage_conformance_suite!(local_backend, raftkit_testkit::conformance::local());
