//! Environment overrides of config keys.
//!
//! `THREATPIPE_SECTION__KEY=value` sets `section.key`; a double underscore separates levels
//! and single underscores stay part of the key. Under the librdkafka option maps
//! (`kafka.consumer`, `kafka.producer`) single underscores become dots, since librdkafka
//! property names are dotted (`THREATPIPE_KAFKA__PRODUCER__COMPRESSION_TYPE=lz4`).

use super::{ConfigError, ENV_PREFIX};

/// Applies overrides to `table`; returns (dotted key, variable name) for each one applied.
pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let mut path: Vec<String> =
            var[ENV_PREFIX.len()..].split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.len() == 3 && path[0] == "kafka" && (path[1] == "consumer" || path[1] == "producer") {
            path[2] = path[2].replace('_', ".");
        }
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Key {
                key: path.join("."),
                origin: format!(" (from environment variable {var})"),
                detail: "empty key segment".into(),
            });
        }
        let is_librdkafka_option = path.len() == 3 && path[0] == "kafka";
        let value = if is_librdkafka_option { toml::Value::String(raw.clone()) } else { parse_value(&raw) };
        let mut cursor = &mut *table;
        for segment in &path[..path.len() - 1] {
            let entry = cursor
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Key {
                        key: path.join("."),
                        origin: format!(" (from environment variable {var})"),
                        detail: format!("`{segment}` is a value, not a section"),
                    })
                }
            };
        }
        // `path` is non-empty: split always yields at least one segment.
        let leaf = path[path.len() - 1].clone();
        cursor.insert(leaf, value);
        applied.push((path.join("."), var));
    }
    Ok(applied)
}

/// Reads a value as TOML if it is one (number, bool, array, quoted string), else as a string.
fn parse_value(raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    let looks_typed = trimmed.starts_with('[')
        || trimmed.starts_with('"')
        || trimmed == "true"
        || trimmed == "false"
        || trimmed.parse::<i64>().is_ok()
        || trimmed.parse::<f64>().is_ok();
    if looks_typed {
        if let Ok(mut table) = format!("v = {trimmed}").parse::<toml::Table>() {
            if let Some(value) = table.remove("v") {
                return value;
            }
        }
    }
    toml::Value::String(raw.to_string())
}
