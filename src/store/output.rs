//! What agents report, applied in batches (group commit), and the kept output.
//!
//! Output of a result is kept as rows of `output_chunks`, each covering a byte range of the
//! whole output. Only the head (bytes before `head`) and the tail (the last `tail` bytes) are
//! kept; the middle is counted in `results.dropped`. Chunks carry per-task sequence numbers:
//! one already stored is a duplicate (a re-send after a reconnect) and is skipped, so nothing
//! is stored twice. An agent cut off during a flood sends one `Skipped` in place of the chunks
//! it gave up (they lay wholly in the middle): it advances the sequence and the byte count like
//! those chunks and stores nothing.

use super::db::{Tx, query};
use super::db::{from_row, parsed};
use super::{MultiRow, Result, Store, statement_chunks};
use crate::protocol::{ErrorCode, OutputStream, ResultStatus, TaskEnd};
use bytes::Bytes;
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
    /// Chunks `seq..seq + chunks`, `bytes` bytes from byte `offset` on, that the agent did not
    /// keep (`protocol::agent::OutputSkipped`).
    Skipped {
        result_id: i64,
        seq: u64,
        chunks: u64,
        offset: u64,
        bytes: u64,
    },
}

/// What became of one [`AgentWrite`], in the same order as the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// `status` is the result's status after the write; `changed` says whether it moved.
    Started { status: ResultStatus, changed: bool },
    /// `offset` is where the chunk landed in the output, `None` for a duplicate or for late
    /// output of a result that already ended (not kept); `next_seq` is what to acknowledge.
    Chunk { offset: Option<u64>, next_seq: u64 },
    /// The sequence number skipped ahead: chunks are missing, so the agent must re-send.
    Gap { next_seq: u64 },
    /// A skip was applied, or was already (a re-send).
    Skipped { next_seq: u64 },
    /// The report breaks the protocol (a skip into the head, or one that does not fit the
    /// output stored): nothing was applied, and the connection must close.
    Refused { reason: &'static str },
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

from_row!(ChunkRow, |row| {
    Ok(ChunkRow {
        offset: row.try_get::<i64, _>("pos")? as u64,
        stream: OutputStream::from_code(row.try_get("stream")?),
        data: row.try_get("data")?,
    })
});

/// A chunk with its result's id.
struct ResultChunk(i64, ChunkRow);

from_row!(ResultChunk, |row| {
    Ok(ResultChunk(row.try_get("result_id")?, sqlx::FromRow::from_row(row)?))
});

/// Per-result state loaded once per batch.
struct State {
    status: ResultStatus,
    /// Aborted only because its agent never acknowledged the task: a late `Started` proves it
    /// runs after all, and the truth wins.
    revivable: bool,
    timeout_ms: i64,
    next_seq: u64,
    output_bytes: u64,
    error_info: Option<String>,
    /// New pieces to insert: (offset, stream, bytes).
    pieces: Vec<(u64, OutputStream, Vec<u8>)>,
    output_changed: bool,
    /// Set by a `Started` of this batch: (start time, deadline).
    started: Option<(i64, i64)>,
    /// Set by the `Finished` of this batch that ended the result.
    ended: Option<End>,
}

/// How a result ended, to be written.
struct End {
    status: ResultStatus,
    exit_code: Option<i32>,
    error_code: Option<ErrorCode>,
    at: i64,
}

/// A result's state as [`LOAD`] reads it, with its id.
struct Loaded(i64, State);

from_row!(Loaded, |row| {
    let status = parsed("status", row.try_get("status")?)?;
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(Loaded(
        row.try_get("id")?,
        State {
            status,
            revivable: status == ResultStatus::Aborted
                && error_code.as_deref() == Some(ErrorCode::ClientNotResponse.as_str()),
            timeout_ms: row.try_get::<i64, _>("timeout_secs")? * 1000,
            next_seq: row.try_get::<i64, _>("next_seq")? as u64,
            output_bytes: row.try_get::<i64, _>("output_bytes")? as u64,
            error_info: row.try_get("error_info")?,
            pieces: Vec::new(),
            output_changed: false,
            started: None,
            ended: None,
        },
    ))
});

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

    /// Counts chunks `seq..seq + chunks` (`bytes` bytes from `offset` on) as output not kept.
    /// The server may already have the first of them (the agent gave them up before it heard
    /// the ack): then only the rest counts. The agent only skips bytes the server drops, but it
    /// is not taken on trust: a skip into the head, or one whose bytes do not continue the
    /// output stored, is refused.
    fn skip(&mut self, seq: u64, chunks: u64, offset: u64, bytes: u64, limits: OutputLimits) -> Applied {
        let (end_seq, end) = (seq.saturating_add(chunks), offset.saturating_add(bytes));
        if end_seq <= self.next_seq {
            return Applied::Skipped {
                next_seq: self.next_seq,
            };
        }
        if seq > self.next_seq {
            return Applied::Gap {
                next_seq: self.next_seq,
            };
        }
        if offset < limits.head {
            return Applied::Refused {
                reason: "output skipped inside the kept head",
            };
        }
        let continues = if seq == self.next_seq {
            offset == self.output_bytes
        } else {
            (offset + 1..end).contains(&self.output_bytes)
        };
        if !continues {
            return Applied::Refused {
                reason: "output skipped at an offset that does not continue the stored output",
            };
        }
        self.output_bytes = end;
        self.next_seq = end_seq;
        self.output_changed = true;
        Applied::Skipped {
            next_seq: self.next_seq,
        }
    }

    /// Applies one report in memory; the batch's rows are written afterwards.
    fn apply(&mut self, write: &AgentWrite, limits: OutputLimits) -> Applied {
        match write {
            AgentWrite::Started { at, grace_ms, .. } => {
                let changed = self.status == ResultStatus::Pending || self.revivable;
                if changed {
                    self.revivable = false;
                    self.error_info = None;
                    self.status = ResultStatus::Running;
                    self.started = Some((*at, at + self.timeout_ms + grace_ms));
                }
                Applied::Started {
                    status: self.status,
                    changed,
                }
            }
            AgentWrite::Chunk { seq, stream, data, .. } => {
                if self.status.is_terminal() {
                    // Ended without the agent, e.g. `ClientNotResponse` after a lost link: the
                    // result stays as it ended, and the agent may forget what it re-sends late.
                    Applied::Chunk {
                        offset: None,
                        next_seq: self.next_seq.max(seq.saturating_add(1)),
                    }
                } else if *seq < self.next_seq {
                    Applied::Chunk {
                        offset: None,
                        next_seq: self.next_seq,
                    }
                } else if *seq > self.next_seq {
                    Applied::Gap {
                        next_seq: self.next_seq,
                    }
                } else {
                    let offset = self.append(*stream, data, limits);
                    Applied::Chunk {
                        offset: Some(offset),
                        next_seq: self.next_seq,
                    }
                }
            }
            AgentWrite::Skipped {
                seq,
                chunks,
                offset,
                bytes,
                ..
            } => self.skip(*seq, *chunks, *offset, *bytes, limits),
            AgentWrite::Finished {
                chunks,
                exit_code,
                end,
                at,
                ..
            } => {
                // An ended result took no late output, so it cannot wait for it either.
                if *chunks > self.next_seq && !self.status.is_terminal() {
                    return Applied::Early {
                        next_seq: self.next_seq,
                    };
                }
                let mut changed = None;
                if let Some((status, error_code)) = end.outcome(self.status, *exit_code) {
                    self.status = status;
                    // Without a sentence of its own (a user's stop), the result keeps the one
                    // set when it was stopped ("Stopped by …").
                    let info = match end {
                        TaskEnd::Error { error_info, .. } => Some(error_info.clone()),
                        _ => error_code.map(|c| c.default_info().to_string()),
                    };
                    if info.is_some() {
                        self.error_info = info;
                    }
                    self.ended = Some(End {
                        status,
                        exit_code: *exit_code,
                        error_code,
                        at: *at,
                    });
                    changed = Some((status, error_code, self.error_info.clone()));
                }
                Applied::Finished {
                    changed,
                    exit_code: *exit_code,
                }
            }
        }
    }
}

impl Store {
    /// Applies a batch of agent reports in one transaction: one statement loads the state of up
    /// to a statement's most rows of results, the reports are applied in memory, and the changes are
    /// written with multi-row statements, a few per batch rather than a few per report.
    pub async fn apply_agent_writes(&self, writes: &[AgentWrite], limits: OutputLimits) -> Result<Vec<Applied>> {
        let mut tx = self.write_tx().await?;
        let mut ids: Vec<i64> = writes.iter().map(AgentWrite::result_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut states: HashMap<i64, State> = HashMap::with_capacity(ids.len());
        for chunk in statement_chunks(&ids, tx.rows_per_statement()) {
            let mut statement = query(LOAD.sql(chunk.len()));
            for id in chunk {
                statement = statement.bind(id);
            }
            for Loaded(id, state) in statement.fetch_all(&mut tx).await? {
                states.insert(id, state);
            }
        }
        let applied = writes
            .iter()
            .map(|write| match states.get_mut(&write.result_id()) {
                Some(state) => state.apply(write, limits),
                None => Applied::Missing,
            })
            .collect();
        write_states(&mut tx, &states, limits).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// The kept output of a result from byte `from` on, in order. The row that contains
    /// `from` is returned whole.
    pub async fn output_chunks(&self, result_id: i64, from: u64) -> Result<Vec<ChunkRow>> {
        query(
            "SELECT pos, stream, data FROM output_chunks WHERE result_id = $1 \
             AND pos + length(data) > $2 ORDER BY pos",
        )
        .bind(result_id)
        .bind(from as i64)
        .fetch_all(&self.pool)
        .await
    }

    /// The kept output of many results, each from its own byte offset on (`(result id, from)`),
    /// a few statements for all; the row that contains `from` is returned whole.
    pub async fn outputs_since(&self, since: &[(i64, u64)]) -> Result<HashMap<i64, Vec<ChunkRow>>> {
        static SINCE: MultiRow = MultiRow::new(
            "WITH v(id, from_pos) AS (VALUES ",
            2,
            ") SELECT c.result_id, c.pos, c.stream, c.data FROM v JOIN output_chunks c \
             ON c.result_id = v.id AND c.pos + length(c.data) > v.from_pos ORDER BY c.result_id, c.pos",
        );
        let mut chunks: HashMap<i64, Vec<ChunkRow>> = HashMap::with_capacity(since.len());
        for batch in statement_chunks(since, self.pool.rows_per_statement()) {
            let mut statement = query(SINCE.sql(batch.len()));
            for (id, from) in batch {
                statement = statement.bind(id).bind(*from as i64);
            }
            for ResultChunk(result_id, chunk) in statement.fetch_all(&self.pool).await? {
                chunks.entry(result_id).or_default().push(chunk);
            }
        }
        Ok(chunks)
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
            let mut statement = query(&sql);
            for id in batch {
                statement = statement.bind(id);
            }
            for (result_id, data) in statement.fetch_all::<(i64, Vec<u8>)>(&self.pool).await? {
                outputs.entry(result_id).or_default().extend(data);
            }
        }
        Ok(outputs)
    }
}

/// The state of the results a batch is about.
static LOAD: MultiRow = MultiRow::new(
    "SELECT r.id, r.status, r.error_code, r.next_seq, r.output_bytes, r.error_info, i.timeout_secs FROM results r \
     JOIN invocations i ON i.id = r.invocation_id WHERE r.id IN (VALUES ",
    1,
    ")",
);

static INSERT_PIECES: MultiRow = MultiRow::new(
    "INSERT INTO output_chunks (result_id, pos, stream, data) VALUES ",
    4,
    "",
);

static STARTED: MultiRow = MultiRow::new(
    "WITH v(id, at, deadline, next_seq, output_bytes, dropped) AS (VALUES ",
    6,
    ") UPDATE results SET status = 'Running', start_time = v.at, deadline = v.deadline, \
     error_code = NULL, error_info = NULL, finish_time = NULL, next_seq = v.next_seq, output_bytes = v.output_bytes, dropped = v.dropped FROM v WHERE results.id = v.id",
);

static COUNTED: MultiRow = MultiRow::new(
    "WITH v(id, next_seq, output_bytes, dropped) AS (VALUES ",
    4,
    ") UPDATE results SET next_seq = v.next_seq, output_bytes = v.output_bytes, dropped = v.dropped \
     FROM v WHERE results.id = v.id",
);

static ENDED: MultiRow = MultiRow::new(
    "WITH v(id, status, exit_code, error_code, error_info, at, started_at, deadline, next_seq, output_bytes, \
     dropped) AS (VALUES ",
    11,
    ") UPDATE results SET status = v.status, exit_code = v.exit_code, error_code = v.error_code, \
     error_info = v.error_info, finish_time = v.at, start_time = COALESCE(results.start_time, v.started_at, v.at), \
     deadline = COALESCE(v.deadline, results.deadline), next_seq = v.next_seq, \
     output_bytes = v.output_bytes, dropped = v.dropped FROM v WHERE results.id = v.id",
);

/// Writes what a batch changed: new output pieces, then the results' rows (started, output
/// counters, ended), each kind with multi-row statements.
async fn write_states(tx: &mut Tx, states: &HashMap<i64, State>, limits: OutputLimits) -> Result<()> {
    let rows = tx.rows_per_statement();
    let mut pieces: Vec<(i64, u64, OutputStream, &[u8])> = Vec::new();
    for (id, state) in states.iter().filter(|(_, s)| s.output_changed) {
        let tail_start = limits.head.max(state.output_bytes.saturating_sub(limits.tail));
        for (offset, stream, data) in &state.pieces {
            let end = offset + data.len() as u64;
            // Head pieces are always kept; tail pieces only where they reach past `tail_start`.
            if *offset < limits.head {
                pieces.push((*id, *offset, *stream, data));
            } else if end > tail_start {
                let from = tail_start.max(*offset);
                pieces.push((*id, from, *stream, &data[(from - offset) as usize..]));
            }
        }
        if tail_start > limits.head {
            trim_tail(&mut *tx, *id, limits.head, tail_start).await?;
        }
    }
    for chunk in statement_chunks(&pieces, rows) {
        let mut statement = query(INSERT_PIECES.sql(chunk.len()));
        for (id, pos, stream, data) in chunk {
            statement = statement.bind(id).bind(*pos as i64).bind(stream.code()).bind(*data);
        }
        statement.execute(&mut *tx).await?;
    }

    let dropped = |s: &State| s.output_bytes.saturating_sub(limits.head + limits.tail) as i64;
    // Started only: running now. Started and ended in one batch: written once, as ended.
    let started: Vec<(i64, &State)> = states
        .iter()
        .filter(|(_, s)| s.started.is_some() && s.ended.is_none())
        .map(|(id, s)| (*id, s))
        .collect();
    for chunk in statement_chunks(&started, rows) {
        let mut statement = query(STARTED.sql(chunk.len()));
        for (id, s) in chunk {
            let (at, deadline) = s.started.unwrap_or_default();
            statement = statement
                .bind(id)
                .bind(at)
                .bind(deadline)
                .bind(s.next_seq as i64)
                .bind(s.output_bytes as i64)
                .bind(dropped(s));
        }
        statement.execute(&mut *tx).await?;
    }
    let output_only: Vec<(i64, &State)> = states
        .iter()
        .filter(|(_, s)| s.output_changed && s.started.is_none() && s.ended.is_none())
        .map(|(id, s)| (*id, s))
        .collect();
    for chunk in statement_chunks(&output_only, rows) {
        let mut statement = query(COUNTED.sql(chunk.len()));
        for (id, s) in chunk {
            statement = statement
                .bind(id)
                .bind(s.next_seq as i64)
                .bind(s.output_bytes as i64)
                .bind(dropped(s));
        }
        statement.execute(&mut *tx).await?;
    }
    let ended: Vec<(i64, &State, &End)> = states
        .iter()
        .filter_map(|(id, s)| Some((*id, s, s.ended.as_ref()?)))
        .collect();
    for chunk in statement_chunks(&ended, rows) {
        let mut statement = query(ENDED.sql(chunk.len()));
        for (id, s, end) in chunk {
            statement = statement
                .bind(id)
                .bind(end.status.as_str())
                .bind(end.exit_code)
                .bind(end.error_code.map(|c| c.as_str()))
                .bind(&s.error_info)
                .bind(end.at)
                .bind(s.started.map(|(at, _)| at))
                .bind(s.started.map(|(_, deadline)| deadline))
                .bind(s.next_seq as i64)
                .bind(s.output_bytes as i64)
                .bind(dropped(s));
        }
        statement.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Keeps only the last bytes of a result's tail: rows wholly before `tail_start` go, the row
/// that straddles it is cut.
async fn trim_tail(tx: &mut Tx, result_id: i64, head: u64, tail_start: u64) -> Result<()> {
    query("DELETE FROM output_chunks WHERE result_id = $1 AND pos >= $2 AND pos + length(data) <= $3")
        .bind(result_id)
        .bind(head as i64)
        .bind(tail_start as i64)
        .execute(&mut *tx)
        .await?;
    query(
        "UPDATE output_chunks SET data = substr(data, CAST($3 - pos + 1 AS INTEGER)), pos = $3 \
         WHERE result_id = $1 AND pos >= $2 AND pos < $3",
    )
    .bind(result_id)
    .bind(head as i64)
    .bind(tail_start as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl AgentWrite {
    fn result_id(&self) -> i64 {
        match self {
            AgentWrite::Started { result_id, .. }
            | AgentWrite::Chunk { result_id, .. }
            | AgentWrite::Skipped { result_id, .. }
            | AgentWrite::Finished { result_id, .. } => *result_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::query_scalar;
    use crate::store::{Store, now_ms, test_store};
    use std::collections::BTreeMap;

    const LIMITS: OutputLimits = OutputLimits { head: 10, tail: 10 };

    async fn running_result(store: &Store) -> i64 {
        let new = crate::store::invocations::tests::new_invocation(&["i-a"], now_ms() + 60_000);
        let id = store.create_invocation(&new).await.unwrap().id;
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

    crate::store::both_backends! {
    async fn output_keeps_head_and_tail_and_counts_the_middle(store) {
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
    }

    crate::store::both_backends! {
    async fn duplicate_chunks_are_skipped_and_gaps_reported(store) {
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
    }

    fn skip(result_id: i64, seq: u64, chunks: u64, offset: u64, bytes: u64) -> AgentWrite {
        AgentWrite::Skipped {
            result_id,
            seq,
            chunks,
            offset,
            bytes,
        }
    }

    crate::store::both_backends! {
    async fn a_skip_counts_its_chunks_as_dropped_output_and_a_resent_one_is_ignored(store) {
        let id = running_result(&store).await;

        // Head, three chunks (30 bytes) the agent did not keep, tail.
        let applied = store
            .apply_agent_writes(
                &[
                    chunk(id, 0, b"0123456789"),
                    skip(id, 1, 3, 10, 30),
                    chunk(id, 4, b"abcdefghij"),
                ],
                LIMITS,
            )
            .await
            .unwrap();
        let again = store
            .apply_agent_writes(&[skip(id, 1, 3, 10, 30)], LIMITS)
            .await
            .unwrap();
        let result = store.result(&store_invocation(&store, id).await, "i-a").await.unwrap();

        assert_eq!(applied[1], Applied::Skipped { next_seq: 4 });
        assert_eq!(
            applied[2],
            Applied::Chunk {
                offset: Some(40),
                next_seq: 5
            }
        );
        assert_eq!(
            again[0],
            Applied::Skipped { next_seq: 5 },
            "a duplicate changes nothing"
        );
        assert_eq!(store.output(id).await.unwrap(), b"0123456789abcdefghij");
        assert_eq!((result.output_bytes, result.dropped), (50, 30));
    }
    }

    crate::store::both_backends! {
    async fn a_skip_whose_first_chunks_arrived_counts_only_the_rest(store) {
        let id = running_result(&store).await;
        store
            .apply_agent_writes(&[chunk(id, 0, b"0123456789"), chunk(id, 1, b"xxxxx")], LIMITS)
            .await
            .unwrap();

        // The agent gave up chunks 1–3 before it heard that chunk 1 was stored.
        let applied = store
            .apply_agent_writes(&[skip(id, 1, 3, 10, 30), chunk(id, 4, b"abcdefghij")], LIMITS)
            .await
            .unwrap();
        let result = store.result(&store_invocation(&store, id).await, "i-a").await.unwrap();

        assert_eq!(applied[0], Applied::Skipped { next_seq: 4 });
        assert_eq!(store.output(id).await.unwrap(), b"0123456789abcdefghij");
        assert_eq!((result.output_bytes, result.dropped), (50, 30));
    }
    }

    crate::store::both_backends! {
    async fn a_skip_into_the_head_or_off_the_stored_output_is_refused(store) {
        let id = running_result(&store).await;
        store
            .apply_agent_writes(&[chunk(id, 0, b"01234")], LIMITS)
            .await
            .unwrap();

        let refused = store
            .apply_agent_writes(&[skip(id, 1, 2, 5, 20), skip(id, 1, 2, 12, 20)], LIMITS)
            .await
            .unwrap();
        let after = store
            .apply_agent_writes(&[chunk(id, 1, b"56789")], LIMITS)
            .await
            .unwrap();

        assert!(matches!(refused[0], Applied::Refused { reason } if reason.contains("head")));
        assert!(matches!(refused[1], Applied::Refused { reason } if reason.contains("offset")));
        assert_eq!(
            after[0],
            Applied::Chunk {
                offset: Some(5),
                next_seq: 2
            },
            "nothing was applied"
        );
    }
    }

    crate::store::both_backends! {
    async fn an_end_before_all_output_is_refused_and_the_first_end_wins(store) {
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
    }

    crate::store::both_backends! {
    async fn a_result_ended_without_its_agent_takes_no_late_output_and_acknowledges_it(store) {
        let id = running_result(&store).await;
        store
            .apply_agent_writes(&[chunk(id, 0, b"kept")], LIMITS)
            .await
            .unwrap();
        // Its instance is gone: the server ends the result as `ClientNotResponse`.
        store.enforce_deadlines(now_ms(), now_ms()).await.unwrap();
        let fin = AgentWrite::Finished {
            result_id: id,
            chunks: 3,
            exit_code: Some(0),
            end: TaskEnd::Exited,
            at: now_ms(),
        };

        let late = store
            .apply_agent_writes(&[chunk(id, 1, b"late"), chunk(id, 2, b"later"), fin], LIMITS)
            .await
            .unwrap();

        assert_eq!(
            late,
            [
                Applied::Chunk {
                    offset: None,
                    next_seq: 2
                },
                Applied::Chunk {
                    offset: None,
                    next_seq: 3
                },
                Applied::Finished {
                    changed: None,
                    exit_code: Some(0)
                }
            ]
        );
        assert_eq!(store.output(id).await.unwrap(), b"kept");
        let result = store.result(&store_invocation(&store, id).await, "i-a").await.unwrap();
        assert_eq!(
            (result.status, result.error_code, result.output_bytes),
            (ResultStatus::Error, Some(ErrorCode::ClientNotResponse), 4)
        );
    }
    }

    /// Results and kept output (each byte with its stream and offset, however the rows split
    /// it) of a store, for comparing two of them.
    async fn snapshot(store: &Store) -> Vec<String> {
        type Row = (String, String, Option<i32>, Option<String>, i64, i64, i64);
        let results: Vec<Row> = query(
            "SELECT instance_id, status, exit_code, error_info, next_seq, output_bytes, dropped FROM results \
             ORDER BY instance_id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let chunks: Vec<(String, i64, i64, Vec<u8>)> = query(
            "SELECT r.instance_id, c.pos, c.stream, c.data FROM output_chunks c JOIN results r ON r.id = c.result_id \
             ORDER BY r.instance_id, c.pos",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let mut bytes: BTreeMap<&str, Vec<(i64, i64, u8)>> = BTreeMap::new();
        for (instance, pos, stream, data) in &chunks {
            let kept = bytes.entry(instance).or_default();
            kept.extend(data.iter().enumerate().map(|(i, b)| (pos + i as i64, *stream, *b)));
        }
        results
            .iter()
            .map(|r| format!("{r:?}"))
            .chain(bytes.iter().map(|b| format!("{b:?}")))
            .collect()
    }

    crate::store::both_backends! {
    async fn a_batch_of_many_results_ends_as_its_reports_applied_one_by_one(batched) {
        let (single, _b) = test_store().await;
        let instances: Vec<String> = (0..37).map(|i| format!("i-{i:02}")).collect();
        let refs: Vec<&str> = instances.iter().map(String::as_str).collect();
        let new = crate::store::invocations::tests::new_invocation(&refs, now_ms() + 60_000);
        let created = batched.create_invocation(&new).await.unwrap();
        single.create_invocation(&new).await.unwrap();
        // Every result starts; most print a few chunks (the odd ones past the head and into the
        // tail, some skipping chunks), some send a duplicate, a gap or an early end; most end,
        // some twice.
        let mut writes = Vec::new();
        for (n, instance) in instances.iter().enumerate() {
            let result_id = created.result_ids[instance];
            let at = 1_000 + n as i64;
            writes.push(AgentWrite::Started {
                result_id,
                at,
                grace_ms: 5,
            });
            let mut chunks = (n % 4) as u64;
            for seq in 0..chunks {
                let data: &'static [u8] = if n % 2 == 1 { b"0123456789abcdef" } else { b"hi\n" };
                writes.push(chunk(result_id, seq, data));
            }
            // Some past the head give up two chunks; one of those skips is sent twice.
            if n % 2 == 1 && chunks > 0 && n % 3 != 1 {
                writes.push(skip(result_id, chunks, 2, chunks * 16, 40));
                if n % 3 == 0 {
                    writes.push(skip(result_id, chunks, 2, chunks * 16, 40));
                }
                chunks += 2;
            }
            match n % 5 {
                0 => writes.push(chunk(result_id, 0, b"dup")),
                1 => writes.push(chunk(result_id, chunks + 3, b"gap")),
                _ => {}
            }
            let fin = |chunks, code| AgentWrite::Finished {
                result_id,
                chunks,
                exit_code: Some(code),
                end: TaskEnd::Exited,
                at: at + 10,
            };
            match n % 6 {
                0 => writes.push(fin(chunks + 1, 0)),
                1 => {}
                2 => {
                    writes.push(fin(chunks, 1));
                    writes.push(fin(chunks, 0));
                }
                _ => writes.push(fin(chunks, 0)),
            }
        }
        // A report about a result that does not exist.
        writes.push(chunk(i64::MAX, 0, b"nobody"));

        let at_once = batched.apply_agent_writes(&writes, LIMITS).await.unwrap();
        let mut one_by_one = Vec::new();
        for write in &writes {
            one_by_one.extend(
                single
                    .apply_agent_writes(std::slice::from_ref(write), LIMITS)
                    .await
                    .unwrap(),
            );
        }

        assert_eq!(at_once, one_by_one);
        assert_eq!(snapshot(&batched).await, snapshot(&single).await);
        let inv = batched.invocation(&created.id).await.unwrap();
        assert_eq!(inv.counts.total(), 37);
        assert!(inv.counts.0.contains_key(&ResultStatus::Running), "{:?}", inv.counts);
    }
    }

    async fn store_invocation(store: &Store, result_id: i64) -> String {
        query_scalar("SELECT invocation_id FROM results WHERE id = $1")
            .bind(result_id)
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }
}
