//! The transaction suite on the in-memory store (each backend crate runs it on its own store).

ortelius_txn::txn_suite!(ortelius_txn::suite::Store::memory());
