//! The conformance suite against PostgreSQL, each test in a fresh schema of a real server that
//! this test binary starts.

mod common;

ortelius_kvs::kvs_conformance_tests!(Box::new(common::store()));
