//! Values Flyte passes by reference: files, directories and structured datasets.

use super::{mismatch, scalar_literal, scalar_of, FromLiteral, IntoLiteral};
use crate::flyte::core::{
    blob_type::BlobDimensionality, scalar, BlobMetadata, BlobType, Literal, StructuredDatasetMetadata, StructuredDatasetType,
};
use crate::AgentError;

/// A file or directory (Flyte `blob`; flytekit's `FlyteFile` and `FlyteDirectory`), by URI.
///
/// Flyte passes the URI only; reading the content is up to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Where it is (`s3://bucket/key`, `gs://…`, a local path in tests).
    pub uri: String,
    /// The declared format (`"csv"`, `"parquet"`), often empty.
    pub format: String,
    /// A directory (multipart blob) rather than one file.
    pub multipart: bool,
}

impl Blob {
    /// A single file.
    pub fn file(uri: impl Into<String>) -> Self {
        Self { uri: uri.into(), format: String::new(), multipart: false }
    }

    /// A directory (multipart).
    pub fn directory(uri: impl Into<String>) -> Self {
        Self { uri: uri.into(), format: String::new(), multipart: true }
    }

    /// Sets the format.
    pub fn with_format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }
}

impl FromLiteral for Blob {
    fn flyte_type() -> String {
        "blob (file or directory)".into()
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        match scalar_of(literal) {
            Some(scalar::Value::Blob(b)) => {
                let t = b.metadata.as_ref().and_then(|m| m.r#type.as_ref());
                Ok(Blob {
                    uri: b.uri.clone(),
                    format: t.map(|t| t.format.clone()).unwrap_or_default(),
                    multipart: t.is_some_and(|t| t.dimensionality == BlobDimensionality::Multipart as i32),
                })
            }
            _ => Err(mismatch::<Self>(literal)),
        }
    }
}

impl IntoLiteral for Blob {
    fn into_literal(self) -> Literal {
        let dimensionality = if self.multipart { BlobDimensionality::Multipart } else { BlobDimensionality::Single } as i32;
        let metadata = BlobMetadata { r#type: Some(BlobType { format: self.format, dimensionality }) };
        scalar_literal(scalar::Value::Blob(crate::flyte::core::Blob { metadata: Some(metadata), uri: self.uri }))
    }
}

/// A structured dataset (a table: flytekit's `StructuredDataset`, pandas or polars frames), by
/// URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructuredDataset {
    /// Where it is.
    pub uri: String,
    /// Its storage format (`"parquet"` by default in flytekit), possibly empty.
    pub format: String,
}

impl StructuredDataset {
    /// A dataset at `uri`, format unspecified.
    pub fn new(uri: impl Into<String>) -> Self {
        Self { uri: uri.into(), format: String::new() }
    }

    /// Sets the format.
    pub fn with_format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }
}

impl FromLiteral for StructuredDataset {
    fn flyte_type() -> String {
        "structured dataset".into()
    }
    fn from_literal(literal: &Literal) -> Result<Self, AgentError> {
        match scalar_of(literal) {
            Some(scalar::Value::StructuredDataset(d)) => Ok(StructuredDataset {
                uri: d.uri.clone(),
                format: d.metadata.as_ref().and_then(|m| m.structured_dataset_type.as_ref()).map(|t| t.format.clone()).unwrap_or_default(),
            }),
            _ => Err(mismatch::<Self>(literal)),
        }
    }
}

impl IntoLiteral for StructuredDataset {
    fn into_literal(self) -> Literal {
        let metadata = StructuredDatasetMetadata {
            structured_dataset_type: Some(StructuredDatasetType { format: self.format, ..Default::default() }),
        };
        scalar_literal(scalar::Value::StructuredDataset(crate::flyte::core::StructuredDataset { uri: self.uri, metadata: Some(metadata) }))
    }
}
