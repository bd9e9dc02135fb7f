//! What the layer records in an upstream's Prometheus registry (feature
//! `prometheus`). Without the feature, [`LayerMetrics`] is an empty type and
//! recording costs nothing.

#[cfg(feature = "prometheus")]
mod enabled {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    /// Labels of `authproxy_layer_requests_total`.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ResultLabels {
        result: &'static str,
    }

    /// The layer's metrics, registered in the upstream's registry.
    #[derive(Debug, Clone)]
    pub(crate) struct LayerMetrics {
        requests: Family<ResultLabels, Counter>,
        latency: Histogram,
    }

    impl LayerMetrics {
        pub(crate) fn register(registry: &mut Registry) -> Self {
            let m = Self {
                requests: Family::default(),
                latency: Histogram::new(exponential_buckets(0.000_001, 3.0, 12)),
            };
            registry.register(
                "authproxy_layer_requests",
                "Requests seen by the authproxy layer, by result",
                m.requests.clone(),
            );
            registry.register(
                "authproxy_layer_verification_duration_seconds",
                "Time the authproxy layer spent deciding",
                m.latency.clone(),
            );
            m
        }

        pub(crate) fn record(&self, result: &'static str, took: std::time::Duration) {
            self.requests.get_or_create(&ResultLabels { result }).inc();
            self.latency.observe(took.as_secs_f64());
        }
    }
}

#[cfg(feature = "prometheus")]
pub(crate) use enabled::LayerMetrics;

/// Without the `prometheus` feature: nothing to record.
#[cfg(not(feature = "prometheus"))]
#[derive(Debug, Clone)]
pub(crate) enum LayerMetrics {}

#[cfg(not(feature = "prometheus"))]
impl LayerMetrics {
    pub(crate) fn record(&self, _result: &'static str, _took: std::time::Duration) {
        match *self {}
    }
}
