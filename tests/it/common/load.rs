//! Sustained issuance against a running server: one client per (CSR, token), each asking
//! again as soon as it has its certificate, until stopped or the server is gone. What each
//! client received is kept, to check against the records afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshroot::edge::client::{self, AgentMetadata, Target};
use x509_parser::prelude::{FromDer as _, X509Certificate};

pub struct Load {
    received: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts one client per `(CSR PEM, token)`.
    pub fn start(target: &Target, requests: Vec<(String, String)>) -> Self {
        let received: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = requests
            .into_iter()
            .map(|(csr, token)| {
                let (target, received, issued, stop) = (
                    target.clone(),
                    received.clone(),
                    issued.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let Ok(channel) = client::connect(&target).await else {
                        return;
                    };
                    let metadata = AgentMetadata {
                        token: Some(token),
                        cluster_id: "Kubernetes".into(),
                    };
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(response) = client::create_certificate(
                            channel.clone(),
                            csr.clone(),
                            3600,
                            &metadata,
                        )
                        .await
                        else {
                            return; // the server is gone
                        };
                        let leaf = super::certificates(&response.cert_chain[0])[0].to_vec();
                        let serial = X509Certificate::from_der(&leaf)
                            .unwrap()
                            .1
                            .raw_serial()
                            .to_vec();
                        let hash = ring::digest::digest(&ring::digest::SHA256, &leaf);
                        received
                            .lock()
                            .unwrap()
                            .insert(serial, hash.as_ref().to_vec());
                        issued.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self {
            received,
            issued,
            stop,
            clients,
        }
    }

    /// Certificates received so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Stops the clients; returns every certificate received: serial → SHA-256 of the leaf.
    pub async fn stop(self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.await.unwrap();
        }
        let received = self.received.lock().unwrap();
        received.clone()
    }
}
