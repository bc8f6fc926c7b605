//! The Istio side of a mesh, generated from meshroot's configuration (`meshroot istio config`):
//! the trust domain and the aliases of a migration, the trust domains the mesh accepts
//! (`meshConfig.caCertificates[].trustDomains`), the CA address with istiod's CA off, and an
//! AuthorizationPolicy that refuses every other source trust domain.
//!
//! Why `caCertificates` and not aliases (istio/istio `86c9f01fd73`,
//! `pilot/pkg/networking/plugin/authn/util.go` `TrustDomainsForValidation`): an inbound sidecar
//! listener accepts a peer whose SPIFFE ID starts with `spiffe://<td>/` for the mesh's own trust
//! domain, each `trustDomainAliases` entry, and each `caCertificates[].trustDomains` entry
//! (`pilot/pkg/security/model/authentication.go` `ApplyToCommonTLSContext`). An alias also makes
//! `a.example/ns/x/sa/y` and `b.example/ns/x/sa/y` one principal in every AuthorizationPolicy
//! (`pkg/spiffe` `ExpandWithTrustDomains`): that is a migration, not acceptance.
//!
//! Every document is a `serde_json::Value`: JSON is YAML, so Helm, istioctl and kubectl read the
//! output as it is, and no YAML is written by hand.

use serde_json::{json, Map, Value};

/// Where a mesh's accepted trust domain is anchored for its proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// PEM certificates that verify the trust domain's workloads: the shared root for a mesh of
    /// this meshroot.
    Pem(String),
    /// A SPIFFE bundle endpoint istiod fetches (`caCertificates[].spiffeBundleUrl`).
    SpiffeBundleUrl(String),
}

/// Trust domains a mesh accepts, and what anchors them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The mesh (or partner) they belong to, for people.
    pub name: String,
    /// Its trust domain, then its aliases (a migration in progress there).
    pub trust_domains: Vec<String>,
    pub anchor: Anchor,
}

/// What one mesh's Istio needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioMesh {
    pub name: String,
    pub trust_domain: String,
    /// Migrations in progress (`trust_domain_aliases`).
    pub aliases: Vec<String>,
    pub accepted: Vec<Accepted>,
    /// `host:port` of meshroot's CSR API as the proxies dial it (`CA_ADDR`).
    pub ca_address: String,
    /// `values.global.multiCluster.clusterName`, when the output is for one cluster.
    pub cluster_name: Option<String>,
    /// The namespace the AuthorizationPolicy goes to (Istio's root namespace: every workload).
    pub policy_namespace: String,
}

/// The output formats of `meshroot istio config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `meshConfig` alone (the `istio` ConfigMap's `mesh` key, or any installer's meshConfig).
    MeshConfig,
    /// Values for Istio's `istiod` Helm chart.
    HelmValues,
    /// An `IstioOperator` for `istioctl install -f`.
    IstioOperator,
    /// Kyma's `Istio` custom resource (operator.kyma-project.io/v1alpha2).
    Kyma,
    /// The AuthorizationPolicies: the trust-domain form (Istio ≥ 1.31) and the principals form.
    Policies,
}

impl IstioMesh {
    /// Every trust domain this mesh's proxies accept a peer from: its own, its aliases, then
    /// the accepted ones (Istio's `TrustDomainsForValidation` order, each once).
    pub(crate) fn accepted_trust_domains(&self) -> Vec<String> {
        let mut all = vec![self.trust_domain.clone()];
        all.extend(self.aliases.iter().cloned());
        for accepted in &self.accepted {
            all.extend(accepted.trust_domains.iter().cloned());
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|td| seen.insert(td.clone()));
        all
    }

    /// `meshConfig`: trust domain, aliases, accepted trust domains and the CA address.
    pub fn mesh_config(&self) -> Value {
        let mut config = Map::new();
        config.insert("trustDomain".into(), json!(self.trust_domain));
        if !self.aliases.is_empty() {
            config.insert("trustDomainAliases".into(), json!(self.aliases));
        }
        let ca_certificates: Vec<Value> = self
            .accepted
            .iter()
            .map(|accepted| {
                let mut entry = Map::new();
                match &accepted.anchor {
                    Anchor::Pem(pem) => entry.insert("pem".into(), json!(pem)),
                    Anchor::SpiffeBundleUrl(url) => {
                        entry.insert("spiffeBundleUrl".into(), json!(url))
                    }
                };
                entry.insert("trustDomains".into(), json!(accepted.trust_domains));
                Value::Object(entry)
            })
            .collect();
        if !ca_certificates.is_empty() {
            config.insert("caCertificates".into(), Value::Array(ca_certificates));
        }
        // istio-agent reads CA_ADDR from the proxy's environment, which proxyMetadata sets for
        // every proxy of the mesh (the Helm value global.caAddress sets the same variable).
        config.insert(
            "defaultConfig".into(),
            json!({ "proxyMetadata": { "CA_ADDR": self.ca_address } }),
        );
        Value::Object(config)
    }

    /// The `values` both installers share: the CA address, the cluster's name, istiod's CA off.
    fn values(&self) -> Map<String, Value> {
        let mut global = Map::new();
        global.insert("caAddress".into(), json!(self.ca_address));
        if let Some(cluster) = &self.cluster_name {
            global.insert("multiCluster".into(), json!({ "clusterName": cluster }));
        }
        let mut values = Map::new();
        values.insert("global".into(), Value::Object(global));
        values.insert(
            "pilot".into(),
            json!({ "env": { "ENABLE_CA_SERVER": "false" } }),
        );
        values
    }

    /// Values for the `istiod` chart (`helm install istiod istio/istiod -f values.json`).
    pub fn helm_values(&self) -> Value {
        let mut values = self.values();
        values.insert("meshConfig".into(), self.mesh_config());
        Value::Object(values)
    }

    /// An `IstioOperator` (`istioctl install -f`).
    pub(crate) fn istio_operator(&self) -> Value {
        json!({
            "apiVersion": "install.istio.io/v1alpha1",
            "kind": "IstioOperator",
            "metadata": { "name": format!("meshroot-{}", self.name), "namespace": "istio-system" },
            "spec": {
                "meshConfig": self.mesh_config(),
                "values": Value::Object(self.values()),
            },
        })
    }

    /// Kyma's `Istio` CR. Its CRD (kyma-project/istio, `config/crd/bases/
    /// operator.kyma-project.io_istios.yaml`) takes the trust domain under `spec.config`, and
    /// neither aliases, `caCertificates` nor a CA address: Kyma keeps istiod's CA, and meshroot
    /// reaches it through the `cacerts` plug-in path ([`IstioMesh::kyma_limits`]).
    pub fn kyma(&self) -> Value {
        json!({
            "apiVersion": "operator.kyma-project.io/v1alpha2",
            "kind": "Istio",
            "metadata": { "name": "default", "namespace": "kyma-system" },
            "spec": { "config": { "trustDomain": self.trust_domain } },
        })
    }

    /// What Kyma's CR cannot say for this mesh, for people (empty: nothing is lost).
    pub(crate) fn kyma_limits(&self) -> Vec<String> {
        let mut limits = Vec::new();
        if !self.aliases.is_empty() {
            limits.push(format!(
                "Kyma's Istio CR has no trustDomainAliases: its proxies refuse peers of {}",
                self.aliases.join(", ")
            ));
        }
        if !self.accepted.is_empty() {
            let names: Vec<String> = self
                .accepted
                .iter()
                .flat_map(|a| a.trust_domains.iter().cloned())
                .collect();
            limits.push(format!(
                "Kyma's Istio CR has no caCertificates: its sidecars refuse direct peers of {}; \
                 accept them at a gateway that validates the shared root instead",
                names.join(", ")
            ));
        }
        limits
    }

    /// The AuthorizationPolicies that refuse every source trust domain this mesh does not
    /// accept: the `notTrustDomains` form (Istio ≥ 1.31) and the `notPrincipals` form that older
    /// Istio needs. Apply one. Both deny a request with no Istio mTLS identity too.
    pub fn policies(&self) -> [Value; 2] {
        let trust_domains = self.accepted_trust_domains();
        let principals: Vec<String> = trust_domains.iter().map(|td| format!("{td}/*")).collect();
        let policy = |name: &str, source: Value| {
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": { "name": name, "namespace": self.policy_namespace },
                "spec": {
                    "action": "DENY",
                    "rules": [ { "from": [ { "source": source } ] } ],
                },
            })
        };
        [
            policy(
                "meshroot-accepted-trust-domains",
                json!({ "notTrustDomains": trust_domains }),
            ),
            policy(
                "meshroot-accepted-principals",
                json!({ "notPrincipals": principals }),
            ),
        ]
    }

    /// The documents of one format.
    pub fn documents(&self, format: Format) -> Vec<Value> {
        match format {
            Format::MeshConfig => vec![self.mesh_config()],
            Format::HelmValues => vec![self.helm_values()],
            Format::IstioOperator => vec![self.istio_operator()],
            Format::Kyma => vec![self.kyma()],
            Format::Policies => self.policies().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh_b() -> IstioMesh {
        IstioMesh {
            name: "b".into(),
            trust_domain: "b.example".into(),
            aliases: vec!["old-b.example".into()],
            accepted: vec![Accepted {
                name: "a".into(),
                trust_domains: vec!["a.example".into()],
                anchor: Anchor::Pem("ROOT".into()),
            }],
            ca_address: "meshroot.istio-system.svc:443".into(),
            cluster_name: Some("cluster-b".into()),
            policy_namespace: "istio-system".into(),
        }
    }

    #[test]
    fn an_accepted_mesh_is_a_ca_certificates_entry_never_an_alias() {
        let config = mesh_b().mesh_config();
        assert_eq!(config["trustDomain"], "b.example");
        assert_eq!(config["trustDomainAliases"], json!(["old-b.example"]));
        assert_eq!(
            config["caCertificates"],
            json!([{ "pem": "ROOT", "trustDomains": ["a.example"] }])
        );
        assert_eq!(
            config["defaultConfig"]["proxyMetadata"]["CA_ADDR"],
            "meshroot.istio-system.svc:443"
        );
    }

    #[test]
    fn the_policies_list_every_accepted_trust_domain_and_nothing_else() {
        let [by_trust_domain, by_principal] = mesh_b().policies();
        assert_eq!(
            by_trust_domain["spec"]["rules"][0]["from"][0]["source"]["notTrustDomains"],
            json!(["b.example", "old-b.example", "a.example"])
        );
        assert_eq!(
            by_principal["spec"]["rules"][0]["from"][0]["source"]["notPrincipals"],
            json!(["b.example/*", "old-b.example/*", "a.example/*"])
        );
        assert_eq!(by_principal["spec"]["action"], "DENY");
    }

    #[test]
    fn a_mesh_that_accepts_nothing_has_no_ca_certificates_and_kyma_loses_nothing() {
        let mut mesh = mesh_b();
        mesh.accepted.clear();
        mesh.aliases.clear();
        assert!(mesh.mesh_config().get("caCertificates").is_none());
        assert!(mesh.mesh_config().get("trustDomainAliases").is_none());
        assert!(mesh.kyma_limits().is_empty());
        assert_eq!(mesh_b().kyma_limits().len(), 2);
    }

    #[test]
    fn helm_values_turn_istiods_ca_off_and_name_the_cluster() {
        let values = mesh_b().helm_values();
        assert_eq!(values["pilot"]["env"]["ENABLE_CA_SERVER"], "false");
        assert_eq!(
            values["global"]["caAddress"],
            "meshroot.istio-system.svc:443"
        );
        assert_eq!(values["global"]["multiCluster"]["clusterName"], "cluster-b");
        assert_eq!(values["meshConfig"], mesh_b().mesh_config());
        assert_eq!(
            mesh_b().istio_operator()["spec"]["meshConfig"],
            mesh_b().mesh_config()
        );
    }
}
