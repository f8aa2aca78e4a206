//! The transaction suite: protocol, concurrency (checked histories), sweep and backup-lock
//! tests written once against the KVS contract, run by every backend under the same names
//! (as the KVS conformance suite is). A backend crate runs it with
//! `ortelius_txn::txn_suite!(make_store());` in an integration test, where `make_store()`
//! returns a [`Store`] (a fresh, empty store for each test). Test-support code: assertions and
//! `unwrap` are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod backup_lock;
pub mod common;
pub mod concurrency;
pub mod faults;
pub mod protocol;
pub mod sweep;

pub use common::Store;

/// Generates one `#[test]` per suite test, in one module per suite part, for a backend.
#[macro_export]
macro_rules! txn_suite {
    ($factory:expr) => {
        $crate::txn_suite!(@parts $factory;
            protocol: reads_see_own_writes_and_deletes, uncommitted_writes_are_invisible_to_others, reads_are_repeatable_within_a_transaction, snapshot_sees_exactly_commits_before_start, second_committer_of_a_cell_fails_whatever_the_start_order, disjoint_cells_of_one_row_do_not_conflict, ignore_all_tables_let_the_last_writer_win, reader_rolls_back_abandoned_writer, a_long_run_of_invisible_versions_is_read_through, reader_waits_for_a_committing_writer_instead_of_rolling_it_back, write_conflict_check_rolls_back_abandoned_writer, range_scan_merges_own_writes_and_hides_uncommitted_data, range_scan_streams_many_rows_in_both_directions, get_rows_and_column_ranges_include_own_writes, sweep_sentinel_read_is_retriable_and_orphaned_sentinel_is_ignored, immutable_timestamp_lies_below_running_transactions, read_only_transactions_refuse_writes, bad_writes_are_refused, closed_transactions_refuse_use, transaction_rolled_back_by_another_fails_to_commit, write_skew_is_possible_under_snapshot_isolation, write_skew_is_refused_under_serializable, serializable_table_validates_reads_without_serializable_mode, phantom_row_in_scanned_range_fails_serializable_commit, read_only_serializable_transactions_never_conflict, runner_retries_conflicts_and_not_application_errors, cleaning_transactions_from_a_backup_timestamp_hides_exactly_later_commits;
            concurrency: bank_transfers_conserve_money, concurrent_increments_lose_no_update, recorded_histories_show_no_snapshot_isolation_anomalies, serializable_doctors_never_all_leave_under_contention;
            sweep: conservative_sweep_keeps_the_newest_committed_version_and_a_sentinel, the_only_version_is_never_swept, versions_committed_at_or_after_the_sweep_timestamp_are_untouched, thorough_sweep_keeps_only_the_newest_version_and_no_sentinel, a_deleted_cell_vanishes_under_thorough_and_keeps_its_tombstone_under_conservative, many_versions_of_many_rows_are_swept_across_pages, tables_marked_nothing_are_never_swept, sweeping_an_already_swept_table_deletes_nothing, sweep_stops_while_the_backup_lock_is_held_and_resumes_after_release, progress_is_persisted_so_a_new_sweeper_resumes, a_dry_run_reports_without_deleting, the_sweep_timestamp_never_exceeds_the_unreadable_timestamp, read_only_transactions_time_out, the_background_sweeper_cleans_a_table;
            backup_lock: the_lock_starts_open, a_second_acquire_fails_and_names_the_holder, another_handle_can_inspect_and_release_the_lock, releasing_an_open_lock_says_so, a_lease_lets_deletions_resume_and_shows_in_status, acquire_waits_for_a_deletion_in_flight_and_blocks_new_ones, a_crashed_deleter_blocks_acquire_only_until_its_lease_ends, acquire_gives_up_and_releases_when_deletions_never_finish;
        );
    };
    (@parts $factory:expr; $($part:ident: $($name:ident),* ;)*) => {
        $(
            mod $part {
                #[allow(unused_imports)]
                use super::*;
                $(
                    #[test]
                    fn $name() {
                        let store = $factory;
                        $crate::suite::$part::$name(&store);
                    }
                )*
            }
        )*
    };
}
