//! An ECS request's parameters, as the SDKs encode them (research/ecs-api-compat.md §6): flat
//! `Name=value` pairs, lists as `Name.1, Name.2, …`, booleans as `True`/`true`, JSON objects in
//! strings. Each action takes what it reads; whatever is left over is refused by name
//! ([`Params::finish`]), so an option fleetrun does not support is never silently ignored.

use super::error::EcsError;
use std::collections::BTreeMap;

/// Parameters every request may carry that are about the call, not the action: the account
/// fields every SDK model has, and the signature's own (already checked).
const IGNORED: &[&str] = &[
    "OwnerId",
    "OwnerAccount",
    "ResourceOwnerId",
    "ResourceOwnerAccount",
    "Format",
    "Version",
    "Action",
    "Timestamp",
    "SignatureMethod",
    "SignatureType",
    "SignatureVersion",
    "SignatureNonce",
    "AccessKeyId",
    "Signature",
    "SecurityToken",
];

/// Most items a list parameter (`InstanceId.N`) may have: keeps a hostile `InstanceId.99999999`
/// from costing anything.
const MAX_LIST: usize = 10_000;

pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// From the query's and a form body's pairs; a name given twice keeps its last value.
    pub fn new<'a>(pairs: impl Iterator<Item = &'a (String, String)>) -> Params {
        Params {
            map: pairs.map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// A text parameter; an empty one counts as absent (the SDKs send unset strings as empty).
    pub fn text(&mut self, name: &str) -> Option<String> {
        self.map.remove(name).filter(|v| !v.is_empty())
    }

    pub fn required(&mut self, name: &str) -> Result<String, EcsError> {
        self.text(name).ok_or_else(|| EcsError::missing(name))
    }

    /// A boolean, written any way the SDKs write one (`True`, `true`, `false`, …).
    pub fn bool(&mut self, name: &str) -> Result<Option<bool>, EcsError> {
        self.text(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(EcsError::invalid(name, format!("{v:?} is not true or false"))),
            })
            .transpose()
    }

    pub fn number(&mut self, name: &str) -> Result<Option<u64>, EcsError> {
        self.text(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| EcsError::invalid(name, format!("{v:?} is not a whole number")))
            })
            .transpose()
    }

    /// `Name.1`, `Name.2`, … in numeric order (the signature order is lexical: `.10` before
    /// `.2`); gaps are allowed, empty items are dropped.
    pub fn list(&mut self, name: &str) -> Result<Vec<String>, EcsError> {
        let prefix = format!("{name}.");
        let keys: Vec<String> = self
            .map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            let Ok(n) = key[prefix.len()..].parse::<usize>() else {
                continue; // `Name.1.Key` and the like: not items of this list.
            };
            if n == 0 || n > MAX_LIST {
                return Err(EcsError::invalid(
                    name,
                    format!("{key}: list items are numbered from 1 to {MAX_LIST}"),
                ));
            }
            if let Some(value) = self.map.remove(&key).filter(|v| !v.is_empty()) {
                items.push((n, value));
            }
        }
        items.sort_unstable_by_key(|(n, _)| *n);
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// `Name.N.Key` / `Name.N.Value` pairs (`Tag.N`, `ResourceTag.N`) in numeric order; a value
    /// with no key is refused, a key with no value has an empty one.
    pub fn tags(&mut self, name: &str) -> Result<Vec<crate::protocol::Tag>, EcsError> {
        let prefix = format!("{name}.");
        let keys: Vec<String> = self
            .map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut tags: BTreeMap<usize, (Option<String>, String)> = BTreeMap::new();
        for key in keys {
            let Some((n, part)) = key[prefix.len()..].split_once('.') else {
                continue;
            };
            let (Ok(n), "Key" | "Value") = (n.parse::<usize>(), part) else {
                continue; // not this list's: refused by `finish` unless another reads it
            };
            if n == 0 || n > MAX_LIST {
                return Err(EcsError::invalid(
                    name,
                    format!("{key}: list items are numbered from 1 to {MAX_LIST}"),
                ));
            }
            let value = self.map.remove(&key).unwrap_or_default();
            let entry = tags.entry(n).or_default();
            if part == "Key" {
                entry.0 = Some(value).filter(|k| !k.is_empty());
            } else {
                entry.1 = value;
            }
        }
        tags.into_iter()
            .map(|(n, (key, value))| match key {
                Some(key) => Ok(crate::protocol::Tag { key, value }),
                None if value.is_empty() => Err(EcsError::invalid(name, format!("{name}.{n}.Key is empty"))),
                None => Err(EcsError::invalid(
                    name,
                    format!("{name}.{n}.Value is given without {name}.{n}.Key: give both"),
                )),
            })
            .collect()
    }

    /// A JSON object of parameter values (`Parameters`): strings as they are, numbers and
    /// booleans as their text.
    pub fn json_values(&mut self, name: &str) -> Result<BTreeMap<String, String>, EcsError> {
        let Some(text) = self.text(name) else {
            return Ok(BTreeMap::new());
        };
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).map_err(|_| {
            EcsError::invalid(
                name,
                "must be a JSON object such as {\"name\":\"value\"} (with the legacy SDK, pass json.dumps(...), not a dict)",
            )
        })?;
        object
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                serde_json::Value::Bool(b) => Ok((k, b.to_string())),
                _ => Err(EcsError::invalid(
                    name,
                    format!("the value of {k:?} must be a string, number or boolean"),
                )),
            })
            .collect()
    }

    /// A JSON array of strings in one parameter (`DescribeInstances`' `InstanceIds`).
    pub fn json_list(&mut self, name: &str) -> Result<Vec<String>, EcsError> {
        let Some(text) = self.text(name) else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&text)
            .map_err(|_| EcsError::invalid(name, "must be a JSON array of strings such as [\"i-1\",\"i-2\"]"))
    }

    /// Refuses a parameter given with a value other than the one fleetrun supports.
    pub fn only(&mut self, name: &str, supported: &str) -> Result<(), EcsError> {
        match self.text(name) {
            Some(v) if !v.eq_ignore_ascii_case(supported) => Err(EcsError::invalid(
                name,
                format!("{v:?} is not supported by fleetrun; only {supported} is"),
            )),
            _ => Ok(()),
        }
    }

    /// Ends the reading: any parameter left that is not about the call itself is one this action
    /// does not support, and the request is refused naming it.
    pub fn finish(self) -> Result<(), EcsError> {
        let left: Vec<&str> = self
            .map
            .iter()
            .filter(|(k, v)| !v.is_empty() && !IGNORED.contains(&k.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        match left.first() {
            None => Ok(()),
            Some(first) => {
                let name = first.split('.').next().unwrap_or(first);
                Err(EcsError::bad_request(
                    format!("InvalidParameter.{name}"),
                    format!(
                        "{} not supported by fleetrun's ECS API (see docs/ECS-API.md); leave {} out",
                        left.join(", ") + if left.len() == 1 { " is" } else { " are" },
                        if left.len() == 1 { "it" } else { "them" }
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Params {
        let pairs: Vec<(String, String)> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Params::new(pairs.iter())
    }

    #[test]
    fn lists_come_in_numeric_order_and_leave_their_sub_keys() {
        let mut p = params(&[
            ("InstanceId.10", "i-10"),
            ("InstanceId.2", "i-2"),
            ("InstanceId.1", "i-1"),
            ("Tag.1.Key", "k"),
        ]);
        assert_eq!(p.list("InstanceId").unwrap(), ["i-1", "i-2", "i-10"]);
        assert_eq!(p.list("Tag").unwrap(), Vec::<String>::new());
        let err = p.finish().unwrap_err();
        assert_eq!(err.code, "InvalidParameter.Tag");
        assert!(err.message.contains("Tag.1.Key"), "{}", err.message);
    }

    #[test]
    fn tags_pair_their_keys_and_values_by_number() {
        let mut p = params(&[
            ("ResourceTag.2.Key", "role"),
            ("ResourceTag.2.Value", "web"),
            ("ResourceTag.1.Key", "env"),
            ("ResourceTag.1.Value", "prod"),
            ("ResourceTag.3.Key", "canary"),
            ("Tag.1.Value", "orphan"),
        ]);
        let tags = p.tags("ResourceTag").unwrap();
        assert_eq!(
            tags,
            [
                crate::protocol::Tag::new("env", "prod"),
                crate::protocol::Tag::new("role", "web"),
                crate::protocol::Tag::new("canary", "")
            ]
        );
        assert!(
            p.tags("Tag")
                .unwrap_err()
                .message
                .contains("Tag.1.Value is given without Tag.1.Key")
        );
        p.finish().unwrap();
    }

    #[test]
    fn booleans_json_and_the_call_fields() {
        let mut p = params(&[
            ("KeepCommand", "True"),
            ("EnableParameter", "false"),
            ("Parameters", r#"{"who":"ann","n":3}"#),
            ("OwnerId", "1"),
            ("SignatureType", ""),
            ("Timeout", "x"),
        ]);
        assert_eq!(p.bool("KeepCommand").unwrap(), Some(true));
        assert_eq!(p.bool("EnableParameter").unwrap(), Some(false));
        assert_eq!(p.json_values("Parameters").unwrap()["n"], "3");
        assert_eq!(p.number("Timeout").unwrap_err().code, "InvalidParameter.Timeout");
        p.finish().unwrap();
        let mut legacy = params(&[("Parameters", "{'who': 'ann'}")]);
        assert!(
            legacy
                .json_values("Parameters")
                .unwrap_err()
                .message
                .contains("json.dumps")
        );
    }
}
