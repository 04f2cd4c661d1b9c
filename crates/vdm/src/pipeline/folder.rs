//! A diffusers pipeline folder: `model_index.json` and one sub-folder per component, read
//! unchanged (diffusers `DiffusionPipeline.save_pretrained` / `from_pretrained`).
//!
//! Symlinks are followed (the Hugging Face hub cache stores snapshots as links into `blobs/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vdm_core::{Error, Result};

/// The pipeline classes vdm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineClass {
    /// `TextToVideoSDPipeline`: ModelScope / ZeroScope, a `UNet3DConditionModel`.
    TextToVideoSD,
    /// `AnimateDiffPipeline`: an SD 1.x UNet with AnimateDiff motion modules.
    AnimateDiff,
}

impl PipelineClass {
    /// The `_class_name`s accepted.
    pub const NAMES: &'static [&'static str] = &["TextToVideoSDPipeline", "AnimateDiffPipeline"];

    /// Parses diffusers' `_class_name`.
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] naming `_class_name` and the value.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "TextToVideoSDPipeline" => Ok(Self::TextToVideoSD),
            "AnimateDiffPipeline" => Ok(Self::AnimateDiff),
            other => Err(Error::unknown_variant("_class_name", other, Self::NAMES)),
        }
    }

    /// diffusers' name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TextToVideoSD => "TextToVideoSDPipeline",
            Self::AnimateDiff => "AnimateDiffPipeline",
        }
    }
}

/// `model_index.json`: the pipeline class and each component's `[library, class]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIndex {
    /// `_class_name`.
    pub class_name: String,
    /// Components by folder name: `Some((library, class))`, or `None` for the `[null, null]`
    /// of an absent optional component (AnimateDiff's `feature_extractor`, `image_encoder`).
    pub components: BTreeMap<String, Option<(String, String)>>,
}

impl ModelIndex {
    /// Parses the text of a `model_index.json`. Keys starting with `_` are metadata; other
    /// non-component keys (`requires_safety_checker`, …) are skipped.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `model_index.json` for malformed JSON or a missing
    /// `_class_name`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid("model_index.json", format!("malformed JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| Error::invalid("model_index.json", "not a JSON object"))?;
        let class_name = map
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("model_index.json", "no `_class_name`"))?
            .to_string();
        let components = map
            .iter()
            .filter(|(key, _)| !key.starts_with('_'))
            .filter_map(|(key, value)| {
                let pair = value.as_array().filter(|a| a.len() == 2)?;
                let entry = match (pair[0].as_str(), pair[1].as_str()) {
                    (Some(library), Some(class)) => Some((library.to_string(), class.to_string())),
                    _ => None,
                };
                Some((key.clone(), entry))
            })
            .collect();
        Ok(Self {
            class_name,
            components,
        })
    }

    /// The component's class (`None` when it is absent or `[null, null]`).
    pub fn class_of(&self, component: &str) -> Option<&str> {
        self.components
            .get(component)
            .and_then(|c| c.as_ref())
            .map(|(_, class)| class.as_str())
    }
}

/// An opened pipeline folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineFolder {
    /// The folder.
    pub root: PathBuf,
    /// Its `model_index.json`.
    pub index: ModelIndex,
}

impl PipelineFolder {
    /// Reads `dir/model_index.json`.
    ///
    /// # Errors
    /// [`Error::File`] naming the path when the folder or its `model_index.json` is missing,
    /// unreadable or malformed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::File {
                path: root.display().to_string(),
                reason: "no such model folder".into(),
            });
        }
        let path = root.join("model_index.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: format!("a diffusers pipeline folder needs model_index.json ({e})"),
        })?;
        let index = ModelIndex::from_json_str(&text).map_err(|e| Error::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { root, index })
    }

    /// The pipeline class.
    ///
    /// # Errors
    /// As [`PipelineClass::parse`].
    pub fn class(&self) -> Result<PipelineClass> {
        PipelineClass::parse(&self.index.class_name)
    }

    /// The folder of `component`, which must be listed in `model_index.json` (with any class)
    /// and exist on disk.
    ///
    /// # Errors
    /// [`Error::File`] naming the folder when it is missing or not listed.
    pub fn component_any(&self, component: &str) -> Result<PathBuf> {
        let dir = self.root.join(component);
        if self.index.class_of(component).is_none() || !dir.is_dir() {
            return Err(Error::File {
                path: dir.display().to_string(),
                reason: format!(
                    "the pipeline needs a `{component}` folder listed in model_index.json"
                ),
            });
        }
        Ok(dir)
    }

    /// The folder of `component`, which must be listed in `model_index.json` with one of
    /// `classes` and exist on disk.
    ///
    /// # Errors
    /// [`Error::File`] naming the folder when it is missing; [`Error::UnknownVariant`] naming
    /// `component` when `model_index.json` lists another class (or none).
    pub fn component(&self, component: &str, classes: &[&str]) -> Result<PathBuf> {
        let class = self.index.class_of(component).unwrap_or("none");
        if !classes.contains(&class) {
            return Err(Error::unknown_variant(
                format!("model_index.json: {component}"),
                class,
                classes,
            ));
        }
        let dir = self.root.join(component);
        if !dir.is_dir() {
            return Err(Error::File {
                path: dir.display().to_string(),
                reason: format!("model_index.json lists `{component}` but the folder is missing"),
            });
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_skips_metadata_and_keeps_null_components() {
        let index = ModelIndex::from_json_str(
            r#"{"_class_name": "AnimateDiffPipeline", "_diffusers_version": "0.42.1",
                "image_encoder": [null, null], "unet": ["diffusers", "UNetMotionModel"],
                "requires_safety_checker": false}"#,
        )
        .unwrap();
        assert_eq!(index.class_name, "AnimateDiffPipeline");
        assert_eq!(index.class_of("unet"), Some("UNetMotionModel"));
        assert_eq!(index.class_of("image_encoder"), None);
        assert!(index.components.contains_key("image_encoder"));
        assert!(!index.components.contains_key("requires_safety_checker"));
    }

    #[test]
    fn bad_indexes_are_named_errors() {
        let err = ModelIndex::from_json_str(r#"{"unet": ["diffusers", "X"]}"#).unwrap_err();
        assert!(err.to_string().contains("_class_name"), "{err}");
        let err = PipelineClass::parse("StableDiffusionPipeline").unwrap_err();
        assert!(err.to_string().contains("StableDiffusionPipeline"), "{err}");
        let err = PipelineFolder::open("/definitely/not/here").unwrap_err();
        assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    }
}
