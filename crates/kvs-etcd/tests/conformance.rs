//! The conformance suite against a three-member etcd cluster this test binary starts, each test
//! under a fresh key prefix.

mod common;

ortelius_kvs::kvs_conformance_tests!(Box::new(common::store()));
