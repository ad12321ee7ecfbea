//! What agents report, applied in batches (group commit), and the kept output.
//!
//! Output of a result is kept as rows of `output_chunks`, each covering a byte range of the
//! whole output. Only the head (bytes before `head`) and the tail (the last `tail` bytes) are
//! kept; the middle is counted in `results.dropped`. Chunks carry per-task sequence numbers:
//! one already stored is a duplicate (a re-send after a reconnect) and is skipped, so nothing
//! is stored twice.

use super::{Result, Store, parse_name};
use crate::protocol::{ErrorCode, OutputStream, ResultStatus, TaskEnd};
use bytes::Bytes;
use sqlx::Row;
use std::collections::HashMap;

/// How much output is kept per result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The first `head` bytes are kept.
    pub head: u64,
    /// The last `tail` bytes are kept.
    pub tail: u64,
}

/// One report from an agent, already checked to be about the agent's own task.
#[derive(Debug, Clone)]
pub enum AgentWrite {
    Started {
        result_id: i64,
        at: i64,
        grace_ms: i64,
    },
    Chunk {
        result_id: i64,
        seq: u64,
        stream: OutputStream,
        data: Bytes,
    },
    Finished {
        result_id: i64,
        chunks: u64,
        exit_code: Option<i32>,
        end: TaskEnd,
        at: i64,
    },
}

/// What became of one [`AgentWrite`], in the same order as the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// `status` is the result's status after the write; `changed` says whether it moved.
    Started { status: ResultStatus, changed: bool },
    /// `offset` is where the chunk landed in the output, `None` for a duplicate.
    Chunk { offset: Option<u64>, next_seq: u64 },
    /// The sequence number skipped ahead: chunks are missing, so the agent must re-send.
    Gap { next_seq: u64 },
    /// `changed` is the new status, error code and error info when this end moved the result;
    /// `None` when it was already terminal.
    Finished {
        changed: Option<(ResultStatus, Option<ErrorCode>, Option<String>)>,
        exit_code: Option<i32>,
    },
    /// The end arrived before all the task's output: the agent must re-send.
    Early { next_seq: u64 },
    /// The result no longer exists (its invocation was purged).
    Missing,
}

/// A stored piece of output.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    pub offset: u64,
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// Per-result state loaded once per batch.
struct State {
    status: ResultStatus,
    timeout_ms: i64,
    next_seq: u64,
    output_bytes: u64,
    /// New pieces to insert: (offset, stream, bytes).
    pieces: Vec<(u64, OutputStream, Vec<u8>)>,
    output_changed: bool,
}

impl State {
    /// Adds `data` at the end of the output, keeping only what could survive in head or tail.
    fn append(&mut self, stream: OutputStream, data: &[u8], limits: OutputLimits) -> u64 {
        let offset = self.output_bytes;
        let end = offset + data.len() as u64;
        self.output_bytes = end;
        self.next_seq += 1;
        self.output_changed = true;
        if offset < limits.head {
            let cut = (limits.head.min(end) - offset) as usize;
            self.push(offset, stream, &data[..cut], limits);
        }
        let tail_from = offset.max(limits.head);
        if tail_from < end {
            self.push(tail_from, stream, &data[(tail_from - offset) as usize..], limits);
        }
        offset
    }

    fn push(&mut self, offset: u64, stream: OutputStream, data: &[u8], limits: OutputLimits) {
        let same_region = |a: u64, b: u64| (a < limits.head) == (b < limits.head);
        if let Some((last_offset, last_stream, last)) = self.pieces.last_mut() {
            let last_end = *last_offset + last.len() as u64;
            if *last_stream == stream && last_end == offset && same_region(*last_offset, offset) {
                last.extend_from_slice(data);
                return;
            }
        }
        self.pieces.push((offset, stream, data.to_vec()));
    }
}

impl Store {
    /// Applies a batch of agent reports in one transaction.
    pub async fn apply_agent_writes(&self, writes: &[AgentWrite], limits: OutputLimits) -> Result<Vec<Applied>> {
        let mut tx = self.write_tx().await?;
        let mut states: HashMap<i64, Option<State>> = HashMap::new();
        let mut applied = Vec::with_capacity(writes.len());
        for write in writes {
            let result_id = match write {
                AgentWrite::Started { result_id, .. }
                | AgentWrite::Chunk { result_id, .. }
                | AgentWrite::Finished { result_id, .. } => *result_id,
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(result_id) {
                let row = sqlx::query(
                    "SELECT r.status, r.next_seq, r.output_bytes, i.timeout_secs FROM results r \
                     JOIN invocations i ON i.id = r.invocation_id WHERE r.id = $1",
                )
                .bind(result_id)
                .fetch_optional(&mut *tx)
                .await?;
                let state = match row {
                    Some(row) => Some(State {
                        status: parse_name(row.try_get("status")?)?,
                        timeout_ms: row.try_get::<i64, _>("timeout_secs")? * 1000,
                        next_seq: row.try_get::<i64, _>("next_seq")? as u64,
                        output_bytes: row.try_get::<i64, _>("output_bytes")? as u64,
                        pieces: Vec::new(),
                        output_changed: false,
                    }),
                    None => None,
                };
                slot.insert(state);
            }
            let Some(Some(state)) = states.get_mut(&result_id) else {
                applied.push(Applied::Missing);
                continue;
            };
            applied.push(match write {
                AgentWrite::Started { at, grace_ms, .. } => {
                    let changed = state.status == ResultStatus::Pending;
                    if changed {
                        state.status = ResultStatus::Running;
                        sqlx::query(
                            "UPDATE results SET status = 'Running', start_time = $2, deadline = $3 WHERE id = $1",
                        )
                        .bind(result_id)
                        .bind(at)
                        .bind(at + state.timeout_ms + grace_ms)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Applied::Started {
                        status: state.status,
                        changed,
                    }
                }
                AgentWrite::Chunk { seq, stream, data, .. } => {
                    if *seq < state.next_seq {
                        Applied::Chunk {
                            offset: None,
                            next_seq: state.next_seq,
                        }
                    } else if *seq > state.next_seq {
                        Applied::Gap {
                            next_seq: state.next_seq,
                        }
                    } else {
                        let offset = state.append(*stream, data, limits);
                        Applied::Chunk {
                            offset: Some(offset),
                            next_seq: state.next_seq,
                        }
                    }
                }
                AgentWrite::Finished {
                    chunks,
                    exit_code,
                    end,
                    at,
                    ..
                } => {
                    if *chunks > state.next_seq {
                        Applied::Early {
                            next_seq: state.next_seq,
                        }
                    } else {
                        let mut changed = None;
                        if let Some((status, error_code)) = end.outcome(state.status, *exit_code) {
                            state.status = status;
                            let error_info = match end {
                                TaskEnd::Error { error_info, .. } => Some(error_info.as_str()),
                                _ => error_code.map(|c| c.default_info()),
                            };
                            // Without a sentence of its own (a user's stop), the result keeps
                            // the one set when it was stopped ("Stopped by …").
                            let info: Option<String> = sqlx::query_scalar(
                                "UPDATE results SET status = $2, exit_code = $3, error_code = $4, \
                                 error_info = COALESCE($5, error_info), finish_time = $6, \
                                 start_time = COALESCE(start_time, $6) WHERE id = $1 RETURNING error_info",
                            )
                            .bind(result_id)
                            .bind(status.as_str())
                            .bind(exit_code)
                            .bind(error_code.map(|c| c.as_str()))
                            .bind(error_info)
                            .bind(at)
                            .fetch_one(&mut *tx)
                            .await?;
                            changed = Some((status, error_code, info));
                        }
                        Applied::Finished {
                            changed,
                            exit_code: *exit_code,
                        }
                    }
                }
            });
        }
        for (result_id, state) in states {
            let Some(state) = state.filter(|s| s.output_changed) else {
                continue;
            };
            store_pieces(&mut tx, result_id, &state, limits).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The kept output of a result from byte `from` on, in order. The row that contains
    /// `from` is returned whole.
    pub async fn output_chunks(&self, result_id: i64, from: u64) -> Result<Vec<ChunkRow>> {
        let rows = sqlx::query(
            "SELECT pos, stream, data FROM output_chunks WHERE result_id = $1 \
             AND pos + length(data) > $2 ORDER BY pos",
        )
        .bind(result_id)
        .bind(from as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ChunkRow {
                    offset: row.try_get::<i64, _>("pos")? as u64,
                    stream: OutputStream::from_code(row.try_get("stream")?),
                    data: row.try_get("data")?,
                })
            })
            .collect()
    }

    /// The kept output of a result as one byte string.
    pub async fn output(&self, result_id: i64) -> Result<Vec<u8>> {
        let chunks = self.output_chunks(result_id, 0).await?;
        Ok(chunks.into_iter().flat_map(|c| c.data).collect())
    }

    /// The kept output of many results, a few statements for all (not one per result).
    pub async fn outputs(&self, result_ids: &[i64]) -> Result<HashMap<i64, Vec<u8>>> {
        let mut outputs: HashMap<i64, Vec<u8>> = HashMap::with_capacity(result_ids.len());
        for batch in result_ids.chunks(500) {
            let sql = format!(
                "SELECT result_id, data FROM output_chunks WHERE result_id IN ({}) ORDER BY result_id, pos",
                super::placeholders(1, batch.len())
            );
            let mut query = sqlx::query(&sql);
            for id in batch {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let data: Vec<u8> = row.try_get("data")?;
                outputs.entry(row.try_get("result_id")?).or_default().extend(data);
            }
        }
        Ok(outputs)
    }
}

/// Writes a result's new pieces and trims the tail so that only the last `tail` bytes stay.
async fn store_pieces(
    tx: &mut sqlx::SqliteConnection,
    result_id: i64,
    state: &State,
    limits: OutputLimits,
) -> Result<()> {
    let tail_start = limits.head.max(state.output_bytes.saturating_sub(limits.tail));
    for (offset, stream, data) in &state.pieces {
        let end = offset + data.len() as u64;
        // Head pieces are always kept; tail pieces only where they reach past `tail_start`.
        let (offset, data) = if *offset < limits.head {
            (*offset, &data[..])
        } else if end <= tail_start {
            continue;
        } else if *offset < tail_start {
            (tail_start, &data[(tail_start - offset) as usize..])
        } else {
            (*offset, &data[..])
        };
        sqlx::query("INSERT INTO output_chunks (result_id, pos, stream, data) VALUES ($1, $2, $3, $4)")
            .bind(result_id)
            .bind(offset as i64)
            .bind(stream.code())
            .bind(data)
            .execute(&mut *tx)
            .await?;
    }
    if tail_start > limits.head {
        sqlx::query("DELETE FROM output_chunks WHERE result_id = $1 AND pos >= $2 AND pos + length(data) <= $3")
            .bind(result_id)
            .bind(limits.head as i64)
            .bind(tail_start as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE output_chunks SET data = substr(data, $3 - pos + 1), pos = $3 \
             WHERE result_id = $1 AND pos >= $2 AND pos < $3",
        )
        .bind(result_id)
        .bind(limits.head as i64)
        .bind(tail_start as i64)
        .execute(&mut *tx)
        .await?;
    }
    let dropped = state.output_bytes.saturating_sub(limits.head + limits.tail);
    sqlx::query("UPDATE results SET next_seq = $2, output_bytes = $3, dropped = $4 WHERE id = $1")
        .bind(result_id)
        .bind(state.next_seq as i64)
        .bind(state.output_bytes as i64)
        .bind(dropped as i64)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, now_ms, test_store};

    const LIMITS: OutputLimits = OutputLimits { head: 10, tail: 10 };

    async fn running_result(store: &Store) -> i64 {
        let new = crate::store::invocations::tests::new_invocation(&["i-a"], now_ms() + 60_000);
        let (id, _) = store.create_invocation(&new).await.unwrap();
        let result_id = store.result_id(&id, "i-a").await.unwrap().unwrap();
        let started = AgentWrite::Started {
            result_id,
            at: now_ms(),
            grace_ms: 0,
        };
        store.apply_agent_writes(&[started], LIMITS).await.unwrap();
        result_id
    }

    fn chunk(result_id: i64, seq: u64, data: &'static [u8]) -> AgentWrite {
        AgentWrite::Chunk {
            result_id,
            seq,
            stream: OutputStream::Stdout,
            data: Bytes::from_static(data),
        }
    }

    #[tokio::test]
    async fn output_keeps_head_and_tail_and_counts_the_middle() {
        let (store, _dir) = test_store().await;
        let id = running_result(&store).await;
        let writes: Vec<_> = (0..5).map(|i| chunk(id, i, b"abcdefg")).collect();

        store.apply_agent_writes(&writes[..2], LIMITS).await.unwrap();
        store.apply_agent_writes(&writes[2..], LIMITS).await.unwrap();
        let kept = store.output(id).await.unwrap();
        let result = store.result(&store_invocation(&store, id).await, "i-a").await.unwrap();

        let all = b"abcdefg".repeat(5);
        let expected = [&all[..10], &all[all.len() - 10..]].concat();
        assert_eq!(kept, expected);
        assert_eq!(result.dropped, 35 - 20);
        assert_eq!(result.output_bytes, 35);
    }

    #[tokio::test]
    async fn duplicate_chunks_are_skipped_and_gaps_reported() {
        let (store, _dir) = test_store().await;
        let id = running_result(&store).await;

        let first = store
            .apply_agent_writes(&[chunk(id, 0, b"ab"), chunk(id, 0, b"ab")], LIMITS)
            .await
            .unwrap();
        let gap = store.apply_agent_writes(&[chunk(id, 5, b"zz")], LIMITS).await.unwrap();

        assert_eq!(
            first[0],
            Applied::Chunk {
                offset: Some(0),
                next_seq: 1
            }
        );
        assert_eq!(
            first[1],
            Applied::Chunk {
                offset: None,
                next_seq: 1
            }
        );
        assert_eq!(gap[0], Applied::Gap { next_seq: 1 });
        assert_eq!(store.output(id).await.unwrap(), b"ab");
    }

    #[tokio::test]
    async fn an_end_before_all_output_is_refused_and_the_first_end_wins() {
        let (store, _dir) = test_store().await;
        let id = running_result(&store).await;
        let fin = |chunks, code| AgentWrite::Finished {
            result_id: id,
            chunks,
            exit_code: Some(code),
            end: TaskEnd::Exited,
            at: now_ms(),
        };

        let early = store.apply_agent_writes(&[fin(1, 0)], LIMITS).await.unwrap();
        let done = store
            .apply_agent_writes(&[chunk(id, 0, b"x"), fin(1, 3), fin(1, 0)], LIMITS)
            .await
            .unwrap();

        assert_eq!(early[0], Applied::Early { next_seq: 0 });
        assert_eq!(
            done[1],
            Applied::Finished {
                changed: Some((
                    ResultStatus::Failed,
                    Some(ErrorCode::ExitCodeNonzero),
                    Some(ErrorCode::ExitCodeNonzero.default_info().to_string())
                )),
                exit_code: Some(3)
            }
        );
        assert_eq!(
            done[2],
            Applied::Finished {
                changed: None,
                exit_code: Some(0)
            }
        );
        let result = store.result(&store_invocation(&store, id).await, "i-a").await.unwrap();
        assert_eq!(result.error_code, Some(ErrorCode::ExitCodeNonzero));
    }

    async fn store_invocation(store: &Store, result_id: i64) -> String {
        sqlx::query_scalar("SELECT invocation_id FROM results WHERE id = $1")
            .bind(result_id)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }
}
