//! One typed, validated configuration: a TOML file plus a few environment overrides.
//!
//! Every setting is parsed before anything fails, and every problem is reported with its key and
//! the file it came from (style: linkerd2-proxy). Loading never binds a port or opens the store.
//! Relative paths are relative to the directory of the config file.

use std::path::Path;

mod federation;
mod kubernetes;
mod mesh;
mod model;
mod parse;
mod pkcs11;
mod raw;
mod replicas;
mod revocation;
mod values;

pub use self::model::*;
pub use self::values::is_dns_name;
pub use replicas::{statefulset_members, DEFAULT_MEMBER_TIMEOUT};

impl Config {
    /// Reads and validates a config file, applying `MESHROOT_LISTEN` / `MESHROOT_STORE`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = Self::parse(&text, path, env(ENV_LISTEN), env(ENV_STORE))?;
        if let Some(name) = env(ENV_LOG_NAME) {
            if name.chars().any(|c| c.is_whitespace() || c == '+') {
                return Err(ConfigError {
                    file: path.to_owned(),
                    problems: vec![Problem {
                        key: ENV_LOG_NAME.into(),
                        message: format!("{name:?}: a name without spaces or '+'"),
                    }],
                });
            }
            config.audit.key_name = name;
        }
        if let (Some(replicas), Some(member)) = (&mut config.replicas, env(ENV_MEMBER)) {
            if !replicas.members.contains(&member) {
                return Err(ConfigError {
                    file: path.to_owned(),
                    problems: vec![Problem {
                        key: ENV_MEMBER.into(),
                        message: format!("{member:?} is not one of replicas.members"),
                    }],
                });
            }
            replicas.this_member = Some(member);
        }
        if let Some(admin) = env(ENV_ADMIN_LISTEN) {
            config.admin.listen = admin.parse().map_err(|_| ConfigError {
                file: path.to_owned(),
                problems: vec![Problem {
                    key: ENV_ADMIN_LISTEN.into(),
                    message: format!("{admin:?} is not an address:port"),
                }],
            })?;
        }
        for deprecation in &config.deprecations {
            tracing::warn!(file = %path.display(), "deprecated setting: {deprecation}");
        }
        Ok(config)
    }

    /// [`Config::load`], then [`Config::missing_files`]: what `serve` and a reload read.
    pub(crate) fn load_to_serve(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        let problems = config.missing_files();
        if !problems.is_empty() {
            return Err(ConfigError {
                file: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// The files and directories the configuration names that are not there (or not what
    /// they must be), checked when a configuration is loaded to serve, before anything is
    /// issued or recorded: a start refused for them writes nothing.
    pub(crate) fn missing_files(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });
        let readable = |path: &Path| {
            std::fs::File::open(path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for (index, mesh) in self.meshes.iter().enumerate() {
            for (root_index, root) in mesh.extra_roots.iter().enumerate() {
                if let Err(error) = readable(&root.path) {
                    problem(
                        format!("mesh[{index}].extra_roots[{root_index}]"),
                        format!("{}: {error}", root.path.display()),
                    );
                }
            }
        }
        for (index, crl) in self.revocation.extra_crls.iter().enumerate() {
            if let Err(error) = readable(crl) {
                problem(
                    format!("revocation.extra_crls[{index}]"),
                    format!("{}: {error}", crl.display()),
                );
            }
        }
        if let Some(directory) = self.revocation.crl_file.as_deref().and_then(Path::parent) {
            if !directory.as_os_str().is_empty() && !directory.is_dir() {
                problem(
                    "revocation.crl_file".into(),
                    format!("{} is not a directory", directory.display()),
                );
            }
        }
        if let Some(directory) = &self.audit.export.jsonl_dir {
            if directory.exists() && !directory.is_dir() {
                problem(
                    "audit.export.jsonl_dir".into(),
                    format!("{} is not a directory", directory.display()),
                );
            }
        }
        problems
    }

    pub fn mesh(&self, name: &str) -> Option<&MeshConfig> {
        self.meshes.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests;
