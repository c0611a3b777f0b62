//! Reads the versions of the compared libraries from this crate's Cargo.lock, so a
//! result file names exactly what it measured.

use std::collections::HashMap;

const LIBRARIES: &[&str] = &[
    "tokio-postgres",
    "tabula",
    "sqlx",
    "sea-orm",
    "diesel-async",
];

fn main() {
    println!("cargo::rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let packages = parse(&lock);
    let root = packages.iter().find(|p| p.name == "tabula-peers");
    for library in LIBRARIES {
        // The root's own entry names the version when the lock holds several.
        let pinned = root.and_then(|r| {
            r.dependencies.iter().find_map(|d| {
                let mut words = d.split_whitespace();
                (words.next() == Some(library)).then(|| words.next().map(str::to_owned))?
            })
        });
        let version = pinned.or_else(|| {
            let mut found = packages.iter().filter(|p| p.name == *library);
            match (found.next(), found.next()) {
                (Some(p), None) => Some(p.version.clone()),
                _ => None,
            }
        });
        let key = library.to_uppercase().replace('-', "_");
        println!(
            "cargo::rustc-env=PEERS_VERSION_{key}={}",
            version.as_deref().unwrap_or("unknown")
        );
    }
}

struct Package {
    name: String,
    version: String,
    dependencies: Vec<String>,
}

/// Just enough of the lock file's TOML: `[[package]]` blocks with `name`, `version`
/// and a `dependencies` list of quoted strings.
fn parse(lock: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut fields: HashMap<&str, String> = HashMap::new();
        let mut dependencies = Vec::new();
        let mut in_dependencies = false;
        for line in block.lines().map(str::trim) {
            if in_dependencies {
                if line.starts_with(']') {
                    in_dependencies = false;
                } else {
                    dependencies.push(line.trim_matches(|c| c == '"' || c == ',').to_owned());
                }
            } else if line.starts_with("dependencies = [") {
                in_dependencies = true;
            } else if let Some((key, value)) = line.split_once(" = ") {
                fields.insert(key, value.trim_matches('"').to_owned());
            }
        }
        packages.push(Package {
            name: fields.remove("name").unwrap_or_default(),
            version: fields.remove("version").unwrap_or_default(),
            dependencies,
        });
    }
    packages
}
