/*
 * metrics.h - the gateway's counters and gauges.
 *
 * One X-macro table names every metric once; it generates the struct, the
 * JSON dump (SIGUSR1 logs "metrics {...}") and, later, the Prometheus output.
 * Counters only grow; gauges (G) are recomputed when dumped.
 */
#ifndef FLEETGW_METRICS_H
#define FLEETGW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAP(C, G)                                                      \
  C(datagrams_in, "UDP datagrams received")                                    \
  C(datagrams_out, "UDP datagrams sent")                                       \
  C(datagrams_malformed, "datagrams rejected by the MQTT-SN decoder")          \
  C(datagrams_too_long, "datagrams over 2048 bytes dropped unread (LAN and DTLS)") \
  C(datagrams_unexpected, "well-formed messages not valid in the session state")\
  C(datagrams_unknown_client, "messages from an address with no session")      \
  C(send_errors, "UDP sends that failed")                                      \
  C(connects, "CONNECT messages accepted for processing")                      \
  C(connects_refused, "CONNECTs refused (bad id, bound elsewhere, full)")      \
  C(connects_half_open, "CONNECTs whose will prompts were never answered")     \
  C(new_ids_throttled, "CONNECTs of never-seen ClientIds over a rate limit")    \
  C(new_ids_registry_full, "never-seen ClientIds refused: the registry is full") \
  C(new_ids_pending_full, "never-seen ClientIds refused: admission.max_pending wait") \
  C(registry_busy, "CONNECTs answered congestion: the registry was locked")    \
  C(pending_pruned, "pending identities expired (admission.pending_ttl_s)")    \
  C(audit_pruned, "audit rows deleted by the retention")                       \
  C(will_topics_refused, "will topics refused: not a valid topic name")        \
  C(keepalive_capped, "CONNECTs whose Duration (0 or too long) was capped")   \
  C(subscriptions_refused, "SUBSCRIBEs refused: the leaf holds its maximum")   \
  C(sessions_replaced, "sessions ended by an accepted CONNECT from their address") \
  C(connack_congestion, "CONNACK congestion: upstream not up in time")         \
  C(publish_in_qos_m1, "PUBLISH QoS -1 from leaves")                           \
  C(publish_in_qos0, "PUBLISH QoS 0 from leaves")                              \
  C(publish_in_qos1, "PUBLISH QoS 1 from leaves")                              \
  C(publish_in_qos2, "PUBLISH QoS 2 from leaves")                              \
  C(publish_out_qos0, "PUBLISH QoS 0 to leaves")                               \
  C(publish_out_qos1, "PUBLISH QoS 1 to leaves")                               \
  C(qos_m1_dropped, "QoS -1 publishes dropped (no gateway session or bad id)") \
  C(invalid_topic_id, "publishes rejected with 'invalid topic id'")            \
  C(publish_refused, "leaf publishes the broker refused (closed after them), dropped") \
  C(uplink_congestion, "leaf publishes refused: upstream queue full")          \
  C(queue_dropped, "messages for a leaf dropped: its queue was full")          \
  C(queue_discarded, "queued messages discarded when a session ended")         \
  C(retransmissions, "messages re-sent to leaves (T_RETRY)")                   \
  C(leaves_lost, "leaves lost (keep-alive or sleep timer, retries)")           \
  C(wills_published, "wills published for lost leaves")                        \
  C(upstream_connects, "upstream sessions that came up")                       \
  C(upstream_reconnects, "upstream sessions that came up again (not their first time)") \
  C(upstream_failures, "upstream attempts failed or connections lost")         \
  C(upstream_tls_full, "upstream TLS handshakes in full (the broker's certificate verified)") \
  C(upstream_tls_resumed, "upstream TLS handshakes that resumed a session")    \
  C(upstream_given_up, "leaves told DISCONNECT: upstream gone for good")       \
  C(admission_refused, "CONNECTs refused by admission (policy, binding, blocked)")    \
  C(admission_pending, "CONNECTs from leaves waiting for approval")             \
  C(provision_started, "provisioning runs started")                            \
  C(provision_done, "provisioning runs completed with an active certificate")  \
  C(provision_failed, "provisioning runs failed permanently")                  \
  C(provision_rejected, "provisioning requests rejected by the cloud")         \
  C(provision_retries, "provisioning requests retried (rejection, time-out)")  \
  C(provision_requests, "provisioning requests sent to the cloud")             \
  C(certs_issued, "certificates issued to the gateway by the cloud")           \
  C(certs_orphaned, "certificates orphaned (listed for cleanup)")              \
  C(rotations_started, "certificate rotations started (operator or due)")     \
  C(rotations_done, "certificate rotations completed: new certificate active, old superseded") \
  C(rotations_failed, "certificate rotations failed (the old certificate stays active)") \
  C(plain_udp_refused, "plain UDP CONNECTs refused: admission.plain_udp, or the ClientId uses DTLS") \
  C(dtls_identity_mismatch, "DTLS CONNECTs refused: ClientId other than the DTLS identity") \
  C(dtls_hello_verify_sent, "DTLS cookies handed out (HelloVerifyRequest)")   \
  C(dtls_hello_verify_withheld, "DTLS HelloVerifyRequests not sent: larger than the ClientHello") \
  C(dtls_cookies_bad, "DTLS ClientHellos with a wrong or stale cookie")       \
  C(dtls_handshakes_started, "DTLS handshakes started (cookie verified)")     \
  C(dtls_handshakes_done, "DTLS handshakes completed")                        \
  C(dtls_handshakes_failed, "DTLS handshakes failed (wrong key, unknown identity, bad certificate)") \
  C(dtls_handshakes_timed_out, "DTLS handshakes dropped: lan.dtls.handshake_timeout_ms") \
  C(dtls_refused_full, "DTLS ClientHellos dropped: lan.max_leaves or lan.dtls.max_handshakes held") \
  C(dtls_refused_per_ip, "DTLS ClientHellos dropped: lan.dtls.max_handshakes_per_ip") \
  C(dtls_records_dropped, "DTLS records with no association to go to")        \
  C(dtls_plain_dropped, "datagrams on the DTLS port that are not DTLS")       \
  C(dtls_sessions_replaced, "DTLS associations replaced by a new handshake from their address") \
  C(dtls_identity_replaced, "DTLS associations closed: a new one authenticated as the same identity") \
  C(dtls_idle_closed, "DTLS associations closed: lan.dtls.idle_timeout_s")    \
  C(dtls_oversize_refused, "messages to leaves dropped: larger than the DTLS record MTU") \
  C(sessions_persist_failed, "leaf session writes to the registry that failed (retried)") \
  C(outbox_stored, "leaf QoS 1/2 publishes written to the outbox and acknowledged") \
  C(outbox_sent, "outbox messages handed to an upstream (re-sends after a reconnect excluded)") \
  C(outbox_delivered, "outbox messages acknowledged by the broker and deleted") \
  C(outbox_refused_full, "leaf publishes refused: the outbox at a bound, or its commit failed") \
  C(outbox_dropped, "outbox messages dropped to make room (outbox.when_full drop-oldest)") \
  C(outbox_expired, "outbox messages deleted: older than outbox.ttl_s")       \
  C(outbox_commits, "outbox group commits (transactions)")                     \
  C(outbox_commit_failures, "outbox group commits that failed (their messages refused)") \
  G(outbox_commit_max_us, "longest outbox group commit (its transaction, on the loop), us") \
  C(registry_checkpoints, "WAL checkpoints on the registry's checkpoint thread") \
  C(registry_checkpoint_fallbacks, "WAL checkpoints on the loop: the WAL at 10,000 pages, the thread behind") \
  G(registry_checkpoint_max_us, "longest WAL checkpoint on the checkpoint thread, us") \
  G(registry_wal_pages_max, "largest registry WAL after a commit, pages (from the checkpoint threshold on)") \
  G(outbox_messages, "messages in the outbox (staged, stored, in flight)")    \
  G(outbox_bytes, "topic and payload bytes in the outbox")                     \
  G(outbox_oldest_age_s, "age of the oldest message in the outbox, s")        \
  G(outbox_leaves, "leaves with messages in the outbox")                       \
  G(leaves_active, "leaves connected and active")                              \
  G(leaves_asleep, "leaves asleep or awake")                                   \
  G(leaves_connecting, "leaves waiting for their upstream session")            \
  G(sessions, "session records held")                                          \
  G(upstreams_up, "upstream sessions up")                                      \
  G(dtls_sessions, "DTLS associations established")                            \
  G(dtls_handshaking, "DTLS handshakes in progress")                           \
  G(certs_soonest_not_after_s, "soonest not-after of an active certificate, Unix s; 0 when none") \
  G(certs_expiring, "active certificates expiring within provisioning.expiry_warn_days, expired included") \
  G(certs_expired, "active certificates past their not-after")                 \
  G(ca_not_after_s, "the local CA certificate's not-after, Unix s; 0 without one")

struct metrics {
#define METRICS_FIELD(name, help) uint64_t name;
  METRICS_MAP(METRICS_FIELD, METRICS_FIELD)
#undef METRICS_FIELD
};

/* Writes a JSON object of every metric into buf; returns the length or -1. */
int metrics_to_json(const struct metrics *m, char *buf, size_t cap);

#endif
