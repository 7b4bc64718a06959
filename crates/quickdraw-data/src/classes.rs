//! Class selection: explicit name lists, `@file` lists, and the lecture's groups.

use std::path::Path;

/// Ten pets and farm animals.
pub const PETS: &[&str] = &[
    "cat", "cow", "dog", "duck", "fish", "horse", "mouse", "pig", "rabbit", "sheep",
];
/// The lecture's zoo set: ten wild animals (5,000 drawings each = the 50,000-drawing zoo dataset).
pub const ZOO: &[&str] = &[
    "elephant",
    "giraffe",
    "kangaroo",
    "lion",
    "monkey",
    "panda",
    "penguin",
    "rhinoceros",
    "tiger",
    "zebra",
];
/// Every animal category of the 345 (pets and zoo included).
pub const ANIMALS: &[&str] = &[
    "ant",
    "bat",
    "bear",
    "bee",
    "bird",
    "butterfly",
    "camel",
    "cat",
    "cow",
    "crab",
    "crocodile",
    "dog",
    "dolphin",
    "dragon",
    "duck",
    "elephant",
    "fish",
    "flamingo",
    "frog",
    "giraffe",
    "hedgehog",
    "horse",
    "kangaroo",
    "lion",
    "lobster",
    "monkey",
    "mosquito",
    "mouse",
    "octopus",
    "owl",
    "panda",
    "parrot",
    "penguin",
    "pig",
    "rabbit",
    "raccoon",
    "rhinoceros",
    "scorpion",
    "sea turtle",
    "shark",
    "sheep",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "swan",
    "tiger",
    "whale",
    "zebra",
];

/// Names of the groups accepted by `--classes`.
pub fn group(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "pets" => Some(PETS),
        "zoo" => Some(ZOO),
        "animals" => Some(ANIMALS),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassesError {
    #[error("cannot read class list {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("class list {0:?} is empty")]
    Empty(String),
    #[error("class {0:?} is listed twice")]
    Duplicate(String),
}

/// Parses `--classes`: `a,b,c`, a group (`pets`, `zoo`, `animals`), or `@file` (one name per line,
/// `#` comments). Order is kept: it defines the labels.
pub fn parse_class_spec(spec: &str) -> Result<Vec<String>, ClassesError> {
    let names: Vec<String> = if let Some(path) = spec.strip_prefix('@') {
        let text = std::fs::read_to_string(Path::new(path)).map_err(|source| ClassesError::Io {
            path: path.to_string(),
            source,
        })?;
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    } else if let Some(g) = group(spec.trim()) {
        g.iter().map(|s| s.to_string()).collect()
    } else {
        spec.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if names.is_empty() {
        return Err(ClassesError::Empty(spec.to_string()));
    }
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if !seen.insert(n) {
            return Err(ClassesError::Duplicate(n.clone()));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_class_spec("cat, dog").unwrap(), vec!["cat", "dog"]);
        assert_eq!(parse_class_spec("zoo").unwrap().len(), 10);
        assert!(parse_class_spec("cat,cat").is_err());
        assert!(parse_class_spec(" , ").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "# mine\ncat\n\nsea turtle # comment\n").unwrap();
        assert_eq!(
            parse_class_spec(&format!("@{}", p.display())).unwrap(),
            vec!["cat", "sea turtle"]
        );
    }

    #[test]
    fn groups_are_real_categories() {
        let cats = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/quickdraw/categories.txt"
        );
        let Ok(text) = std::fs::read_to_string(cats) else {
            eprintln!("SKIP groups_are_real_categories: {cats} not found (../shared/data absent)");
            return;
        };
        let all: std::collections::HashSet<&str> = text.lines().collect();
        for name in PETS.iter().chain(ZOO).chain(ANIMALS) {
            assert!(all.contains(name), "{name} is not a QuickDraw category");
        }
        assert!(PETS.iter().chain(ZOO).all(|c| ANIMALS.contains(c)));
    }
}
