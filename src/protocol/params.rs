//! `{{name}}` parameters in command content: finding them, checking the values given, and
//! filling them in for one instance. Pure functions, shared by the server's domain layer and the
//! CLI (which turns parameters on when the content has placeholders).

use std::collections::BTreeMap;

/// Prefix of the built-in parameters, e.g. `{{fleetrun::instance_id}}`.
pub const BUILTIN_PREFIX: &str = "fleetrun::";

/// The built-in parameter names (after the prefix).
pub const BUILTINS: &[&str] = &["instance_id", "instance_name", "region_id", "invoke_id", "command_id"];

/// Alibaba's prefix of the built-ins, e.g. `{{ACS::InstanceId}}`, so content written for Cloud
/// Assistant runs unchanged; its names map to ours ([`ACS_BUILTINS`]).
pub const ACS_PREFIX: &str = "ACS::";

/// Alibaba's built-in names and the ones they stand for.
pub const ACS_BUILTINS: &[(&str, &str)] = &[
    ("InstanceId", "instance_id"),
    ("InstanceName", "instance_name"),
    ("RegionId", "region_id"),
    ("InvokeId", "invoke_id"),
    ("CommandId", "command_id"),
];

/// What a placeholder's name is: a built-in (`Ok` with our name for it, `Err` when the prefix
/// is a built-in's but the name is unknown), or `None` for a custom parameter.
fn builtin(name: &str) -> Option<Result<&str, ()>> {
    if let Some(ours) = name.strip_prefix(BUILTIN_PREFIX) {
        return Some(BUILTINS.iter().copied().find(|b| *b == ours).ok_or(()));
    }
    let acs = name.strip_prefix(ACS_PREFIX)?;
    Some(
        ACS_BUILTINS
            .iter()
            .find(|(a, _)| *a == acs)
            .map(|(_, ours)| *ours)
            .ok_or(()),
    )
}

/// Most custom parameters one command may declare (Alibaba's limit).
pub const MAX_PARAMETERS: usize = 20;

/// Longest parameter name.
pub const MAX_NAME_LEN: usize = 64;

/// One `{{…}}` placeholder: its byte range in the content and its trimmed name.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

fn placeholders(content: &str) -> impl Iterator<Item = Placeholder<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        loop {
            let open = pos + content.get(pos..)?.find("{{")?;
            let close = open + 2 + content[open + 2..].find("}}")?;
            pos = close + 2;
            let name = content[open + 2..close].trim();
            if is_name(name) {
                return Some(Placeholder {
                    start: open,
                    end: close + 2,
                    name,
                });
            }
            // Not a parameter (e.g. `{{ $x | y }}` in a template): leave it alone.
            pos = open + 2;
        }
    })
}

fn is_name(name: &str) -> bool {
    let plain = name
        .strip_prefix(BUILTIN_PREFIX)
        .or_else(|| name.strip_prefix(ACS_PREFIX))
        .unwrap_or(name);
    !plain.is_empty()
        && name.len() <= MAX_NAME_LEN + BUILTIN_PREFIX.len()
        && plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `content` has any `{{name}}` placeholder, custom or built-in.
pub fn has_placeholders(content: &str) -> bool {
    placeholders(content).next().is_some()
}

/// The custom parameter names used in `content`, in order of first use, without duplicates.
pub fn custom_names(content: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in placeholders(content) {
        if builtin(p.name).is_none() && !names.iter().any(|n| n == p.name) {
            names.push(p.name.to_string());
        }
    }
    names
}

/// Checks content and values when parameters are enabled. The error names the problem.
pub fn check(content: &str, values: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    for p in placeholders(content) {
        if let Some(Err(())) = builtin(p.name) {
            let ours = BUILTINS.iter().map(|b| format!("{{{{{BUILTIN_PREFIX}{b}}}}}"));
            let acs = ACS_BUILTINS.iter().map(|(a, _)| format!("{{{{{ACS_PREFIX}{a}}}}}"));
            return Err(format!(
                "unknown built-in parameter {{{{{}}}}}; the built-ins are {}",
                p.name,
                ours.chain(acs).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if let Some((name, _)) = values.iter().find(|(_, v)| v.contains('\0')) {
        return Err(format!(
            "the value of parameter {name:?} contains a NUL byte, which no shell can take"
        ));
    }
    let names = custom_names(content);
    if names.len() > MAX_PARAMETERS {
        return Err(format!(
            "the content declares {} parameters; at most {MAX_PARAMETERS} are allowed",
            names.len()
        ));
    }
    if let Some(unknown) = values.keys().find(|k| !names.contains(k)) {
        return Err(format!(
            "unknown parameter {unknown:?}: the content has no {{{{{unknown}}}}}; declared: [{}]",
            names.join(", ")
        ));
    }
    if let Some(missing) = names.iter().find(|n| !values.contains_key(*n)) {
        return Err(format!(
            "parameter {missing:?} is used in the content but has no value in `parameters`"
        ));
    }
    Ok(names)
}

/// The content with every placeholder replaced. Unknown names (already refused by [`check`])
/// are left as they are.
pub fn fill(content: &str, values: &BTreeMap<String, String>, builtins: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(content.len());
    let mut copied = 0;
    for p in placeholders(content) {
        let value = match builtin(p.name) {
            Some(Ok(ours)) => builtins.get(ours),
            Some(Err(())) => None,
            None => values.get(p.name),
        };
        if let Some(value) = value {
            out.push_str(&content[copied..p.start]);
            out.push_str(value);
            copied = p.end;
        }
    }
    out.push_str(&content[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn alibabas_builtins_are_filled_as_ours() {
        let content = "{{ACS::InstanceId}} {{ACS::InvokeId}} {{who}}";
        assert_eq!(check(content, &values(&[("who", "ann")])).unwrap(), vec!["who"]);
        let builtins = BTreeMap::from([("instance_id", "i-1".to_string()), ("invoke_id", "t-1".to_string())]);
        assert_eq!(fill(content, &values(&[("who", "ann")]), &builtins), "i-1 t-1 ann");
        assert!(
            check("{{ACS::AccountId}}", &values(&[]))
                .unwrap_err()
                .contains("{{ACS::InstanceId}}")
        );
    }

    #[test]
    fn names_are_found_with_spaces_and_builtins_set_apart() {
        let content = "echo {{ who }} {{who}} {{fleetrun::instance_id}} {{ not a name }} {{n-2}}";
        assert_eq!(custom_names(content), vec!["who", "n-2"]);
    }

    #[test]
    fn check_names_unknown_and_missing_parameters() {
        let content = "echo {{who}}";
        assert!(check(content, &values(&[("who", "x")])).is_ok());
        assert!(check(content, &values(&[])).unwrap_err().contains("\"who\""));
        assert!(
            check(content, &values(&[("who", "x"), ("extra", "y")]))
                .unwrap_err()
                .contains("unknown parameter \"extra\"")
        );
        assert!(
            check("{{fleetrun::nope}}", &values(&[]))
                .unwrap_err()
                .contains("unknown built-in")
        );
    }

    #[test]
    fn fill_replaces_custom_and_builtin_parameters() {
        let builtins = BTreeMap::from([("instance_id", "i-1".to_string())]);
        let filled = fill(
            "{{a}}-{{ fleetrun::instance_id }}-{{b}}-{{ x y }}",
            &values(&[("a", "1")]),
            &builtins,
        );
        assert_eq!(filled, "1-i-1-{{b}}-{{ x y }}");
    }
}
