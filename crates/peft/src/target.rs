//! Which modules a method applies to, matched as Hugging Face peft matches `target_modules`:
//! a list entry matches a module whose name equals it or ends with `.entry`; a single string is a
//! regular expression that must match the whole name. An optional list of layer indices
//! (`layers_to_transform`) restricts matches to those transformer layers.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// `target_modules`: a list of names/suffixes, or one regex (full match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    Names(Vec<String>),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    pub target_modules: Targets,
    /// Only these transformer layers (None: all).
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
}

/// The transformer layer a module belongs to (`...layers.{i}...`).
pub fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next().and_then(|i| i.parse().ok());
        }
    }
    None
}

impl TargetSpec {
    pub fn names(names: &[&str]) -> Self {
        Self {
            target_modules: Targets::Names(names.iter().map(|s| s.to_string()).collect()),
            layers_to_transform: None,
        }
    }

    /// Check that a regex compiles; names need no check.
    pub fn validate(&self) -> Result<(), String> {
        if let Targets::Regex(r) = &self.target_modules {
            Regex::new(&format!("^(?:{r})$")).map_err(|e| format!("target_modules regex {r:?}: {e}"))?;
        }
        Ok(())
    }

    pub fn matches(&self, name: &str) -> bool {
        let by_name = match &self.target_modules {
            Targets::Names(list) => list.iter().any(|t| name == t || name.ends_with(&format!(".{t}"))),
            Targets::Regex(r) => Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(name)),
        };
        by_name
            && match &self.layers_to_transform {
                None => true,
                Some(layers) => layer_index(name).is_some_and(|i| layers.contains(&i)),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "encoder.layers.3.attention.q_proj";

    #[test]
    fn names_match_exactly_or_as_dotted_suffix() {
        assert!(TargetSpec::names(&["q_proj", "v_proj"]).matches(Q));
        assert!(TargetSpec::names(&["attention.q_proj"]).matches(Q));
        assert!(TargetSpec::names(&[Q]).matches(Q));
        assert!(!TargetSpec::names(&["proj"]).matches(Q), "suffix must start at a dot");
        assert!(!TargetSpec::names(&["k_proj"]).matches(Q));
    }

    #[test]
    fn regex_must_match_the_whole_name() {
        let spec = |r: &str| TargetSpec { target_modules: Targets::Regex(r.into()), layers_to_transform: None };
        assert!(spec(r".*\.(q|v)_proj").matches(Q));
        assert!(!spec(r"q_proj").matches(Q));
        assert!(spec("(").validate().is_err());
    }

    #[test]
    fn layer_subsets() {
        let mut s = TargetSpec::names(&["q_proj"]);
        s.layers_to_transform = Some(vec![0, 3]);
        assert!(s.matches(Q));
        assert!(!s.matches("encoder.layers.4.attention.q_proj"));
        assert!(!s.matches("feature_projection.q_proj"), "no layer index, no match");
        assert_eq!(layer_index("encoder.layers.11.feed_forward.output_dense"), Some(11));
    }

    #[test]
    fn deserialises_both_forms() {
        let a: TargetSpec = serde_json::from_str(r#"{"target_modules": ["q_proj"]}"#).unwrap();
        assert_eq!(a, TargetSpec::names(&["q_proj"]));
        let b: TargetSpec =
            serde_json::from_str(r#"{"target_modules": ".*q_proj", "layers_to_transform": [1]}"#).unwrap();
        assert_eq!(b.target_modules, Targets::Regex(".*q_proj".into()));
    }
}
