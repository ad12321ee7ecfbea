//! `fleetrun send-file`: upload once, then wait for every instance's result.

use crate::config::SendFileArgs;
use crate::protocol::files::{FileSendStatus, FileStatus};
use std::time::Duration;

/// Returns the exit code: 0 when every instance has the file, 1 otherwise.
pub async fn send_file(args: SendFileArgs) -> anyhow::Result<i32> {
    let client = args.client.client()?;
    let mut fields = vec![
        ("instance_ids", args.instances.join(",")),
        ("target_dir", args.dir.clone()),
        ("mode", args.mode.clone()),
        ("overwrite", args.overwrite.to_string()),
        ("timeout_secs", args.timeout.to_string()),
    ];
    for (name, value) in [("name", &args.name), ("owner", &args.owner), ("group", &args.group)] {
        if let Some(value) = value {
            fields.push((name, value.clone()));
        }
    }
    let created = client.send_file(&args.file, &fields).await?;
    if args.no_wait {
        println!("{}", created.send_id);
        return Ok(0);
    }
    eprintln!(
        "{}: sending {} to {} instance(s)",
        created.send_id,
        args.file.display(),
        args.instances.len()
    );
    let send = loop {
        let send = client.file_send(&created.send_id).await?;
        if send.status.is_final() {
            break send;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&send)?);
    } else {
        let path = format!("{}/{}", send.target_dir.trim_end_matches('/'), send.name);
        for result in send.results.iter().flatten() {
            match result.status {
                FileStatus::Success => println!("{}: Success {path} (sha256 {})", result.instance_id, send.sha256),
                status => println!(
                    "{}: {status} {} {}",
                    result.instance_id,
                    result.error_code.map(|c| c.as_str()).unwrap_or_default(),
                    result.error_info.as_deref().unwrap_or_default()
                ),
            }
        }
    }
    Ok(if send.status == FileSendStatus::Success { 0 } else { 1 })
}
