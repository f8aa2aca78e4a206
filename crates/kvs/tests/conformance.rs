//! The conformance suite against the in-memory backend.
#![allow(clippy::unwrap_used)]

use ortelius_kvs::memory::MemoryKvs;

ortelius_kvs::kvs_conformance_tests!(Box::new(MemoryKvs::new()));
