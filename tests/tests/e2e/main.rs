//! End-to-end suite: every test runs a real server on port 0 with real
//! mTLS, once on SQLite and once on a fresh PostgreSQL database.
//!
//! PostgreSQL: when it is unreachable the PostgreSQL variants are reported
//! as ignored with a banner saying so, unless `CI` is set (or
//! `IDVAULT_REQUIRE_POSTGRES=1`), in which case they run and fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    unreachable_pub
)]

mod audit;
mod bad_input;
mod bridge;
mod consent;
mod credentials;
mod events;
mod hostile;
mod logs;
mod matching;
mod metrics;
mod mtls;
mod ops;
mod policies;
mod subjects;
mod tamper;
mod tokens;
mod transactions;
mod upgrade;

use std::future::Future;
use std::pin::Pin;

use idvault_tests::Backend;
use libtest_mimic::{Arguments, Failed, Trial};

type TestFn = fn(Backend) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

macro_rules! tests {
    ($($path:path),* $(,)?) => {
        &[$((stringify!($path), |b| Box::pin($path(b)) as Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>)),*]
    };
}

/// Tests that run on both backends.
const BOTH: &[(&str, TestFn)] = tests![
    metrics::scraped_values_move_and_labels_are_bounded,
    subjects::lifecycle,
    subjects::write_survives_restart,
    subjects::owner_isolation,
    subjects::crypto_shredding,
    subjects::chain_length_is_capped,
    hostile::other_partners_ids_look_absent,
    hostile::forged_owner_authorises_nothing,
    hostile::forged_links_detokenize_for_nobody_else,
    hostile::other_partners_tokens_consents_and_commands_look_absent,
    hostile::every_rpc_refuses_oversized_and_nested_messages,
    hostile::calls_held_open_are_bounded_per_identity,
    hostile::wallet_calls_are_counted_per_source,
    hostile::wallet_requests_in_flight_are_counted_per_source,
    tamper::flipped_ciphertext_byte,
    tamper::packet_moved_to_other_subject,
    tamper::middle_packet_deleted,
    tamper::long_chain_is_checked_a_page_at_a_time,
    tamper::packet_relabelled_as_another_field,
    upgrade::packets_from_before_0026_survive_it,
    upgrade::match_rows_from_before_0027_survive_it,
    upgrade::tokens_and_creation_leaves_from_before_0028_survive_them,
    upgrade::code_failures_from_before_0034_survive_it,
    audit::edited_record_is_named,
    audit::removed_and_reordered_leaves_are_named,
    audit::forged_checkpoint_is_named,
    audit::forged_leaf_is_not_sequenced,
    audit::copied_leaf_is_not_signed,
    audit::forged_tree_state_is_not_signed,
    audit::cut_back_log_is_not_signed_again,
    audit::uncovered_leaves_are_named,
    audit::rolled_back_chain_is_detected,
    audit::rolled_back_creation_is_detected,
    audit::proofs_over_grpc,
    audit::group_commit_isolates_a_failed_request,
    audit::group_commit_isolates_a_request_whose_last_rows_fail,
    audit::write_set_batch_isolates_a_failed_request,
    audit::fail_closed,
    audit::refusals_are_audited_without_pii,
    bad_input::invalid_fields,
    bad_input::malformed_and_oversized_messages,
    bad_input::edge_refusals_are_audited,
    ops::concurrent_writes_keep_one_audit_chain,
    ops::root_key_rotation_keeps_old_data,
    ops::retention_prunes_spent_rows_only,
    bridge::import_links_and_is_idempotent,
    bridge::fragments_merge_into_one_customer,
    bridge::import_needs_the_bridge_role,
    bridge::sealed_identifiers_import_like_plain_ones,
    bridge::sealed_bridge_file_opens_only_for_its_partner,
    bridge::import_streams_and_summaries_are_bounded,
    bridge::concurrent_overlapping_imports_merge_into_one,
    bridge::a_customer_holds_a_bounded_number_of_identifiers,
    tokens::tokenize_stream_stateless,
    tokens::tokenize_stream_cross_reference,
    tokens::detokenize_is_role_gated_and_audited,
    tokens::rotation_keeps_tokens_resolvable,
    tokens::oversized_stream_message_is_resource_exhausted,
    tokens::tokenize_rejects_are_capped,
    tokens::tokenize_refuses_long_paths_and_records,
    tokens::tokenize_streams_per_partner_are_limited,
    tokens::streams_that_never_read_are_ended_at_their_deadline,
    tokens::tokenize_stream_output_growth_and_csv_quotes,
    tokens::tokenize_stream_reads_csv_the_same_however_split,
    matching::same_person_gets_a_pairwise_token_per_partner,
    matching::concurrent_first_answers_share_one_token,
    matching::a_deletion_under_way_stalls_no_batch,
    matching::candidates_past_the_first_page_are_read,
    matching::deleted_subject_is_no_longer_matchable,
    matching::update_moves_the_index,
    matching::thin_queries_are_refused_and_audited,
    matching::stream_answers_batches_in_order,
    matching::match_streams_per_partner_are_limited,
    matching::rate_limit_triggers,
    matching::match_needs_the_match_role,
    matching::new_match_domain_is_backfilled_at_start,
    matching::link_answers_each_record_and_one_to_one_holds,
    matching::one_to_one_link_records_every_chunk_before_answering,
    matching::one_to_one_link_answers_once_the_writer_has_room,
    matching::a_dropped_domain_is_cleared_in_parts,
    matching::new_variant_kinds_are_backfilled_at_start,
    matching::estimated_weights_are_sealed_and_used,
    matching::copied_match_rows_name_nobody,
    matching::a_forged_token_refuses_only_its_own_answers,
    consent::happy_path_end_to_end,
    consent::signature_refusals,
    consent::grant_checks_refuse,
    consent::allowances_hold_against_a_broad_permit,
    consent::forged_release_is_refused,
    consent::release_reads_the_newest_packets_linked_to_the_head,
    consent::releases_go_through_while_the_person_is_updated,
    consent::open_challenges_are_capped,
    consent::challenge_and_replay_refusals,
    consent::raced_presentations_release_once,
    consent::replay_refused_after_restart,
    consent::standing_consent_and_revocation,
    consent::consent_revoked_before_presentation_is_refused,
    consent::withdrawal_and_presentation_race_one_wins,
    consent::forged_consent_rows_authorise_nothing,
    consent::rewrap_then_retire,
    consent::rewrap_leaves_forged_rows_and_edited_links,
    consent::rewrap_walk_crosses_windows_and_passes_forged_rows,
    consent::rewrap_walk_waits_for_no_held_row,
    consent::revoking_anothers_consent_locks_nothing,
    ops::rewrap_rpc_is_gated_and_reports,
    subjects::deletion_receipt_verifies,
    tokens::token_domain_rotation_is_per_domain,
    consent::enrollment_and_device_call_checks,
    credentials::issuance_per_device_is_capped,
    credentials::issue_present_and_verify,
    credentials::presentations_are_refused_for_each_fault,
    credentials::issuance_checks_and_policy,
    credentials::revocation_by_device_operator_and_deletion,
    credentials::late_revocations_force_no_status_list_rebuild,
    credentials::removed_status_list_is_not_started_again,
    credentials::expired_entries_are_pruned_and_published_revoked,
    credentials::naming_anothers_rows_locks_none,
    transactions::approve_and_deny_with_two_third_parties,
    transactions::every_refusal_is_distinct_and_audited,
    transactions::codes_are_single_use_under_concurrency,
    transactions::refused_calls_wake_no_waiter,
    transactions::codes_expire,
    transactions::third_party_records_name_no_subject,
    transactions::forged_pairwise_tokens_reach_nobody,
    transactions::crossed_codes_end_without_deadlock,
    transactions::spent_codes_lock_nobody_else,
    policies::default_deny_and_decisions_audited,
    policies::operator_forbid_overrides_and_is_named,
    policies::reload_swaps_and_keeps_old_set_on_error,
    policies::resource_and_field_policies,
    events::unlinked_and_unruled_events_are_ignored,
    events::command_carries_only_named_fields,
    events::forged_links_and_rules_route_nothing,
    events::ordered_redelivered_until_acknowledged,
    events::following_stream_gets_new_commands,
    events::concurrency_bad_rows_unlink_and_limits,
    events::concurrent_retries_of_one_event_deliver_once,
    events::outbox_share_is_per_publisher,
    events::publisher_leaf_does_not_tell_the_outcome,
    events::rules_target_only_receivers,
    events::ignored_events_hold_no_ones_row,
    events::unlink_and_acknowledgement_take_commands_in_one_order,
    events::rules_are_signed_linked_and_suggested,
    events::publish_and_receive_are_policy_gated,
];

/// Tests of the TLS edge: the backend does not matter, SQLite is used.
const EDGE: &[(&str, TestFn)] = tests![
    mtls::no_client_certificate,
    mtls::certificate_from_another_ca,
    mtls::expired_certificate,
    mtls::revoked_certificate,
    mtls::crl_reload_closes_revoked_connections,
    mtls::expiry_closes_open_connections,
    mtls::handshakes_are_counted_per_source,
    mtls::certificate_without_partner_san,
    mtls::certificate_from_another_trust_domain,
    mtls::unregistered_partner_is_denied_and_audited,
    mtls::health_and_reflection,
    mtls::open_connections_per_identity_are_bounded,
    mtls::wallet_connections_are_counted_per_source,
    audit::flood_is_refused_at_once,
    logs::no_pii_in_logs_or_statuses,
    ops::start_refuses_missing_material,
    ops::loose_key_file_permissions_refused,
    policies::invalid_policies_refuse_start_with_location,
];

/// Tests of several vault replicas sharing one database: PostgreSQL only
/// (SQLite serves one process).
const POSTGRES_ONLY: &[(&str, TestFn)] = tests![
    consent::grant_replay_across_replicas,
    audit::failed_commit_reports_an_unknown_outcome,
    audit::lost_connection_during_a_batch_reports_an_unknown_outcome,
    bridge::imports_of_one_owner_wait_for_each_other,
    hostile::one_partner_cannot_hold_every_connection,
    hostile::naming_anothers_subject_takes_no_lock,
];

/// Tests of SQLite's own housekeeping.
const SQLITE_ONLY: &[(&str, TestFn)] = tests![
    ops::wal_is_checkpointed_in_the_background,
    ops::held_back_truncation_is_retried,
    ops::deletions_truncate_beside_checkpoints,
];

fn run(f: TestFn, backend: Backend) -> Result<(), Failed> {
    idvault_tests::run_test(f(backend)).map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    logs::install_capture();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(idvault_tests::postgres_reachable());
    drop(rt);
    let required = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("IDVAULT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let skip_pg = match &pg {
        Ok(()) => false,
        Err(why) if required => {
            eprintln!(
                "\nPostgreSQL is REQUIRED here (CI) but unreachable: {why}\nThe postgres:: tests will fail.\n"
            );
            false
        }
        Err(why) => {
            eprintln!(
                "\n*** PostgreSQL suite DID NOT RUN: {why}\n*** Start PostgreSQL or set IDVAULT_TEST_POSTGRES_URL; the postgres:: tests are marked ignored.\n"
            );
            true
        }
    };
    let mut trials = Vec::new();
    for (name, f) in BOTH {
        let f = *f;
        trials.push(Trial::test(format!("sqlite::{name}"), move || {
            run(f, Backend::Sqlite)
        }));
        trials.push(
            Trial::test(format!("postgres::{name}"), move || {
                run(f, Backend::Postgres)
            })
            .with_ignored_flag(skip_pg),
        );
    }
    for (name, f) in POSTGRES_ONLY {
        let f = *f;
        trials.push(
            Trial::test(format!("postgres::{name}"), move || {
                run(f, Backend::Postgres)
            })
            .with_ignored_flag(skip_pg),
        );
    }
    for (name, f) in SQLITE_ONLY {
        let f = *f;
        trials.push(Trial::test(format!("sqlite::{name}"), move || {
            run(f, Backend::Sqlite)
        }));
    }
    for (name, f) in EDGE {
        let f = *f;
        trials.push(Trial::test(format!("edge::{name}"), move || {
            run(f, Backend::Sqlite)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
