//! Send File: the sends (one uploaded file and where it goes) and their per-instance results.
//! A result changes status only while it is not final: the first final word wins, whoever says
//! it (the agent, the transfer's timeout, the sweep of deadlines).

use super::db::{from_row, parsed, query};
use super::{Result, Store};
use crate::protocol::files::{FileErrorCode, FileStatus};

/// A send to store, with one `Pending` result per instance.
#[derive(Debug, Clone)]
pub struct NewFileSend {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub description: String,
    pub target_dir: String,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub overwrite: bool,
    pub timeout_secs: u64,
    pub size: u64,
    pub sha256: String,
    pub content_path: String,
    pub created_by: String,
    pub created_at: i64,
    pub deliver_by: i64,
    pub deadline: i64,
}

/// A stored send.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSendRow {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub description: String,
    pub target_dir: String,
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub overwrite: bool,
    pub timeout_secs: u64,
    pub size: u64,
    pub sha256: String,
    pub content_path: String,
    pub content_removed_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub deliver_by: i64,
    pub deadline: i64,
}

/// One instance's result of a send.
#[derive(Debug, Clone, PartialEq)]
pub struct FileResultRow {
    pub send_id: String,
    pub instance_id: String,
    pub status: FileStatus,
    pub error_code: Option<FileErrorCode>,
    pub error_info: Option<String>,
    pub offered_at: Option<i64>,
    pub start_time: Option<i64>,
    pub finish_time: Option<i64>,
    pub bytes_sent: u64,
    pub resumed_from: u64,
}

from_row!(FileSendRow, |row| {
    Ok(FileSendRow {
        id: row.try_get("id")?,
        region_id: row.try_get("region_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        target_dir: row.try_get("target_dir")?,
        mode: row.try_get::<i64, _>("mode")? as u32,
        owner: row.try_get("owner")?,
        group: row.try_get("grp")?,
        overwrite: row.try_get("overwrite")?,
        timeout_secs: row.try_get::<i64, _>("timeout_secs")? as u64,
        size: row.try_get::<i64, _>("size")? as u64,
        sha256: row.try_get("sha256")?,
        content_path: row.try_get("content_path")?,
        content_removed_at: row.try_get("content_removed_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        deliver_by: row.try_get("deliver_by")?,
        deadline: row.try_get("deadline")?,
    })
});

from_row!(FileResultRow, |row| {
    let error_code: Option<String> = row.try_get("error_code")?;
    Ok(FileResultRow {
        send_id: row.try_get("send_id")?,
        instance_id: row.try_get("instance_id")?,
        status: parsed("status", row.try_get("status")?)?,
        error_code: error_code.map(|c| parsed("error_code", c)).transpose()?,
        error_info: row.try_get("error_info")?,
        offered_at: row.try_get("offered_at")?,
        start_time: row.try_get("start_time")?,
        finish_time: row.try_get("finish_time")?,
        bytes_sent: row.try_get::<i64, _>("bytes_sent")? as u64,
        resumed_from: row.try_get::<i64, _>("resumed_from")? as u64,
    })
});

const SEND_COLUMNS: &str = "s.id, s.region_id, s.name, s.description, s.target_dir, s.mode, s.owner, s.grp, \
    s.overwrite, s.timeout_secs, s.size, s.sha256, s.content_path, s.content_removed_at, s.created_by, \
    s.created_at, s.deliver_by, s.deadline";

const RESULT_COLUMNS: &str = "send_id, instance_id, status, error_code, error_info, offered_at, start_time, \
    finish_time, bytes_sent, resumed_from";

/// `status` is not final yet.
const OPEN: &str = "status IN ('Pending', 'Running')";

impl Store {
    /// Stores a send and one `Pending` result per instance, in one transaction.
    pub async fn create_file_send(&self, send: &NewFileSend, instance_ids: &[String]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        query(
            "INSERT INTO file_sends (id, region_id, name, description, target_dir, mode, owner, grp, overwrite, \
             timeout_secs, size, sha256, content_path, created_by, created_at, deliver_by, deadline) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(send.id.as_str())
        .bind(send.region_id.as_str())
        .bind(send.name.as_str())
        .bind(send.description.as_str())
        .bind(send.target_dir.as_str())
        .bind(i64::from(send.mode))
        .bind(send.owner.clone())
        .bind(send.group.clone())
        .bind(send.overwrite)
        .bind(send.timeout_secs as i64)
        .bind(send.size as i64)
        .bind(send.sha256.as_str())
        .bind(send.content_path.as_str())
        .bind(send.created_by.as_str())
        .bind(send.created_at)
        .bind(send.deliver_by)
        .bind(send.deadline)
        .execute(&mut tx)
        .await?;
        for instance_id in instance_ids {
            query("INSERT INTO file_send_results (send_id, instance_id, status) VALUES ($1, $2, 'Pending')")
                .bind(send.id.as_str())
                .bind(instance_id.as_str())
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await
    }

    /// One send; `NotFound` when there is none.
    pub async fn file_send(&self, id: &str) -> Result<FileSendRow> {
        query(&format!("SELECT {SEND_COLUMNS} FROM file_sends s WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(super::Error::NotFound)
    }

    /// The newest sends first, `limit` from `offset`, with how many there are in all.
    pub async fn file_sends(&self, offset: u64, limit: u64) -> Result<(Vec<FileSendRow>, u64)> {
        let rows = query(&format!(
            "SELECT {SEND_COLUMNS} FROM file_sends s ORDER BY s.created_at DESC, s.id LIMIT $1 OFFSET $2"
        ))
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = super::db::query_scalar("SELECT COUNT(*) FROM file_sends")
            .fetch_one(&self.pool)
            .await?;
        Ok((rows, total as u64))
    }

    /// A send's results, by instance id.
    pub async fn file_results(&self, send_id: &str) -> Result<Vec<FileResultRow>> {
        query(&format!(
            "SELECT {RESULT_COLUMNS} FROM file_send_results WHERE send_id = $1 ORDER BY instance_id"
        ))
        .bind(send_id)
        .fetch_all(&self.pool)
        .await
    }

    /// The sends an instance still waits for: its result not final, before the deadline, and
    /// the upload still on disk. Offered again at each connection.
    pub async fn open_file_sends(&self, instance_id: &str, now: i64) -> Result<Vec<FileSendRow>> {
        query(&format!(
            "SELECT {SEND_COLUMNS} FROM file_sends s JOIN file_send_results r ON r.send_id = s.id \
             WHERE r.instance_id = $1 AND r.{OPEN} AND s.deadline > $2 AND s.content_removed_at IS NULL \
             ORDER BY s.created_at"
        ))
        .bind(instance_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// Records that the file was offered to the instance's agent (first time only).
    pub async fn file_offered(&self, send_id: &str, instance_id: &str, now: i64) -> Result<()> {
        query(
            "UPDATE file_send_results SET offered_at = COALESCE(offered_at, $3) \
             WHERE send_id = $1 AND instance_id = $2",
        )
        .bind(send_id)
        .bind(instance_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The agent took the offer from `offset` on: the result is `Running`. False when it is
    /// final already.
    pub async fn file_started(&self, send_id: &str, instance_id: &str, offset: u64, now: i64) -> Result<bool> {
        let changed = query(&format!(
            "UPDATE file_send_results SET status = 'Running', start_time = COALESCE(start_time, $3), \
             resumed_from = $4 WHERE send_id = $1 AND instance_id = $2 AND {OPEN}"
        ))
        .bind(send_id)
        .bind(instance_id)
        .bind(now)
        .bind(offset as i64)
        .execute(&self.pool)
        .await?;
        Ok(changed > 0)
    }

    /// Adds to the bytes sent to the instance.
    pub async fn file_bytes_sent(&self, send_id: &str, instance_id: &str, bytes: u64) -> Result<()> {
        query("UPDATE file_send_results SET bytes_sent = bytes_sent + $3 WHERE send_id = $1 AND instance_id = $2")
            .bind(send_id)
            .bind(instance_id)
            .bind(bytes as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a result: `Success` without an error, `Failed` with one. False when it had ended.
    pub async fn finish_file_result(
        &self,
        send_id: &str,
        instance_id: &str,
        error: Option<(FileErrorCode, &str)>,
        now: i64,
    ) -> Result<bool> {
        let status = if error.is_some() {
            FileStatus::Failed
        } else {
            FileStatus::Success
        };
        let changed = query(&format!(
            "UPDATE file_send_results SET status = $3, error_code = $4, error_info = $5, finish_time = $6 \
             WHERE send_id = $1 AND instance_id = $2 AND {OPEN}"
        ))
        .bind(send_id)
        .bind(instance_id)
        .bind(status.as_str())
        .bind(error.map(|(code, _)| code.as_str().to_string()))
        .bind(error.map(|(_, info)| info.to_string()))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(changed > 0)
    }

    /// Fails the results past their windows: `Pending` past the delivery window
    /// (`ClientNotRunning` when never offered, `DeliveryTimeout` when offered and not taken),
    /// anything open past the deadline (`Timeout`). Returns how many ended.
    pub async fn expire_file_results(&self, now: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut ended = 0;
        let undelivered = [
            ("offered_at IS NULL", FileErrorCode::ClientNotRunning),
            ("offered_at IS NOT NULL", FileErrorCode::DeliveryTimeout),
        ];
        for (offered, code) in undelivered {
            ended += query(&format!(
                "UPDATE file_send_results SET status = 'Failed', error_code = $1, error_info = $2, finish_time = $3 \
                 WHERE status = 'Pending' AND {offered} \
                 AND send_id IN (SELECT id FROM file_sends WHERE deliver_by <= $3)"
            ))
            .bind(code.as_str())
            .bind(code.default_info())
            .bind(now)
            .execute(&mut tx)
            .await?;
        }
        let code = FileErrorCode::Timeout;
        ended += query(&format!(
            "UPDATE file_send_results SET status = 'Failed', error_code = $1, error_info = $2, finish_time = $3 \
             WHERE {OPEN} AND send_id IN (SELECT id FROM file_sends WHERE deadline <= $3)"
        ))
        .bind(code.as_str())
        .bind(code.default_info())
        .bind(now)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Sends whose upload is still on disk and no longer needed: every result final, or the
    /// send older than `before` (retention). `(id, content path)`.
    pub async fn file_contents_to_remove(&self, before: i64) -> Result<Vec<(String, String)>> {
        query(&format!(
            "SELECT id, content_path FROM file_sends WHERE content_removed_at IS NULL AND (created_at < $1 \
             OR NOT EXISTS (SELECT 1 FROM file_send_results r WHERE r.send_id = file_sends.id AND r.{OPEN}))"
        ))
        .bind(before)
        .fetch_all(&self.pool)
        .await
    }

    /// Records a send's upload deleted from disk.
    pub async fn file_content_removed(&self, id: &str, now: i64) -> Result<()> {
        query("UPDATE file_sends SET content_removed_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes sends created before `before` whose upload is gone, with their results.
    pub async fn purge_file_sends(&self, before: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        query(
            "DELETE FROM file_send_results WHERE send_id IN \
             (SELECT id FROM file_sends WHERE created_at < $1 AND content_removed_at IS NOT NULL)",
        )
        .bind(before)
        .execute(&mut tx)
        .await?;
        let deleted = query("DELETE FROM file_sends WHERE created_at < $1 AND content_removed_at IS NOT NULL")
            .bind(before)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_send(id: &str, now: i64) -> NewFileSend {
        NewFileSend {
            id: id.into(),
            region_id: "local".into(),
            name: "app.conf".into(),
            description: String::new(),
            target_dir: "/etc/app".into(),
            mode: 0o640,
            owner: Some("root".into()),
            group: None,
            overwrite: false,
            timeout_secs: 60,
            size: 5,
            sha256: "ab".repeat(32),
            content_path: format!("/data/files/{id}"),
            created_by: "ann".into(),
            created_at: now,
            deliver_by: now + 10_000,
            deadline: now + 60_000,
        }
    }

    crate::store::both_backends! {
        async fn a_send_runs_its_course_and_the_first_final_word_wins(store) {
            let now = 1_000_000;
            let ids = vec!["i-a".to_string(), "i-b".to_string(), "i-c".to_string()];
            store.create_file_send(&new_send("f-1", now), &ids).await.unwrap();
            let send = store.file_send("f-1").await.unwrap();
            assert_eq!((send.mode, send.owner.as_deref(), send.group, send.overwrite), (0o640, Some("root"), None, false));
            assert!(matches!(store.file_send("f-2").await, Err(crate::store::Error::NotFound)));

            assert_eq!(store.open_file_sends("i-a", now).await.unwrap().len(), 1);
            store.file_offered("f-1", "i-a", now).await.unwrap();
            assert!(store.file_started("f-1", "i-a", 262_144, now + 1).await.unwrap());
            store.file_bytes_sent("f-1", "i-a", 100).await.unwrap();
            store.file_bytes_sent("f-1", "i-a", 20).await.unwrap();
            assert!(store.finish_file_result("f-1", "i-a", None, now + 2).await.unwrap());
            assert!(
                !store.finish_file_result("f-1", "i-a", Some((FileErrorCode::Timeout, "late")), now + 3).await.unwrap(),
                "a final result stays final"
            );
            store.file_offered("f-1", "i-b", now).await.unwrap();
            assert!(store.open_file_sends("i-a", now).await.unwrap().is_empty(), "done: not offered again");

            // Past the delivery window: i-b was offered and never took it, i-c never connected.
            assert_eq!(store.expire_file_results(now + 10_000).await.unwrap(), 2);
            let results = store.file_results("f-1").await.unwrap();
            let a = &results[0];
            assert_eq!((a.status, a.bytes_sent, a.resumed_from, a.start_time), (FileStatus::Success, 120, 262_144, Some(now + 1)));
            assert_eq!((results[1].status, results[1].error_code), (FileStatus::Failed, Some(FileErrorCode::DeliveryTimeout)));
            assert_eq!(results[2].error_code, Some(FileErrorCode::ClientNotRunning));

            // Every result is final: the upload can go, then retention takes the send.
            assert_eq!(store.file_contents_to_remove(0).await.unwrap(), vec![("f-1".to_string(), "/data/files/f-1".to_string())]);
            assert_eq!(store.purge_file_sends(now + 1).await.unwrap(), 0, "not while the upload is on disk");
            store.file_content_removed("f-1", now + 5).await.unwrap();
            assert!(store.file_contents_to_remove(0).await.unwrap().is_empty());
            assert_eq!(store.file_sends(0, 10).await.unwrap().1, 1);
            assert_eq!(store.purge_file_sends(now + 1).await.unwrap(), 1);
            assert!(store.file_results("f-1").await.unwrap().is_empty());
        }

        async fn a_running_transfer_past_its_deadline_times_out(store) {
            let now = 2_000_000;
            store.create_file_send(&new_send("f-9", now), &["i-a".to_string()]).await.unwrap();
            assert!(store.file_started("f-9", "i-a", 0, now).await.unwrap());
            assert_eq!(store.expire_file_results(now + 59_999).await.unwrap(), 0, "running inside the delivery window");
            assert!(store.file_contents_to_remove(0).await.unwrap().is_empty(), "still needed");
            assert_eq!(store.expire_file_results(now + 60_000).await.unwrap(), 1);
            let result = &store.file_results("f-9").await.unwrap()[0];
            assert_eq!((result.status, result.error_code), (FileStatus::Failed, Some(FileErrorCode::Timeout)));
        }
    }
}
