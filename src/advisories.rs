//! `amiforge vulndb`: the offline vulnerability database.

use crate::cli::{emit, Format};
use anyhow::Result;
use std::path::PathBuf;

/// `amiforge vulndb` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum VulndbCommand {
    /// Load OSV advisories (directories of OSV JSON records, zip files of them as
    /// osv.dev publishes per ecosystem, or single records) into a database file,
    /// creating it when missing. A record replaces one with the same id; a
    /// withdrawn record removes it.
    Import {
        /// Directories, zip files or JSON files of OSV records.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// The database file.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Describe a database: advisories, when it was imported, its newest advisory.
    Info {
        /// The database file.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Runs a `vulndb` subcommand.
pub fn run(cmd: VulndbCommand) -> Result<()> {
    match cmd {
        VulndbCommand::Import {
            sources,
            db,
            format,
        } => {
            let summary = vulndb::Database::import(&db, &sources)?;
            let info = vulndb::Database::open(&db)?.info().clone();
            for r in &summary.rejected {
                tracing::warn!("not imported: {r}");
            }
            let value = serde_json::json!({ "import": summary, "database": info });
            emit(format, &value, || {
                let mut text = format!(
                    "{}: {} stored, {} withdrawn removed, {} rejected; {} advisories, newest {}",
                    info.path,
                    summary.stored,
                    summary.withdrawn,
                    summary.rejected_count,
                    info.advisories,
                    info.newest_advisory.as_deref().unwrap_or("none")
                );
                for r in &summary.rejected {
                    text.push_str(&format!("\n  rejected {r}"));
                }
                text
            })
        }
        VulndbCommand::Info { db, format } => {
            let info = vulndb::Database::open(&db)?.info().clone();
            emit(format, &info, || {
                format!(
                    "{}: {} advisories, imported {}, newest advisory {}",
                    info.path,
                    info.advisories,
                    info.imported_at,
                    info.newest_advisory.as_deref().unwrap_or("none")
                )
            })
        }
    }
}
