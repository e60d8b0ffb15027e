//! Binding and unbinding (queue.bind, exchange.bind and their unbinds): validated by the
//! source's router, logged when durable, then taken by the router and the exchange's index,
//! all under the vhost's change lock.

use std::sync::Arc;

use super::durable::binding_definition;
use super::topology::Topology;
use super::{Exchange, VHost};
use crate::blocking::blocking;
use crate::exchange::Binding;
use crate::protocol::AmqpError;
use crate::store::Definition;

impl VHost {
    /// queue.bind / exchange.bind.
    ///
    /// Under the change lock: the router validates the binding (a plugin call, under that
    /// exchange's router lock only), a durable binding is logged, then the router and the
    /// exchange's index take it; the topology write lock is held only to count it.
    pub fn bind(&self, source: &str, binding: Binding) -> Result<(), AmqpError> {
        self.bind_as(source, binding, false)
    }

    /// [`bind`](Self::bind), or, when `restoring` a binding already in the definitions log,
    /// the same without the binding limit and the log append.
    pub(crate) fn bind_as(
        &self,
        source: &str,
        binding: Binding,
        restoring: bool,
    ) -> Result<(), AmqpError> {
        let _changes = self.lock_changes();
        let (exchange, durable) = {
            let topology = self.read_topology();
            let exchange = self.bindable_source(&topology, source)?;
            topology.check_destination(&binding.destination, &self.name)?;
            if exchange.has_binding(&binding) {
                return Ok(());
            }
            if !restoring {
                self.limits()
                    .check_bindings(&self.name, source, topology.bindings)?;
            }
            let durable = !restoring
                && self.durable.is_some()
                && topology.binding_is_durable(&exchange, &binding.destination);
            (exchange, durable)
        };
        let slow = self.slow_router(&exchange);
        if !blocking(slow, || exchange.check_bind(&binding))? {
            return Ok(());
        }
        if durable {
            self.log(&Definition::Bind(binding_definition(source, &binding)))?;
        }
        let destination = binding.destination.clone();
        if blocking(slow, || exchange.insert_binding(binding)) {
            self.topology
                .write()
                .bound(&exchange.spec.name, &destination);
        }
        Ok(())
    }

    /// queue.unbind / exchange.unbind. Unbinding is idempotent as in current RabbitMQ: when
    /// the source, the destination or the binding no longer exists the answer is unbind-ok.
    /// Only the default exchange is refused (403), as for bind.
    pub fn unbind(&self, source: &str, binding: &Binding) -> Result<(), AmqpError> {
        let _changes = self.lock_changes();
        let (exchange, durable) = {
            let topology = self.read_topology();
            let exchange = match self.bindable_source(&topology, source) {
                Ok(exchange) => exchange,
                Err(e) if e.code == crate::protocol::ReplyCode::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if topology
                .check_destination(&binding.destination, &self.name)
                .is_err()
                || !exchange.has_binding(binding)
            {
                return Ok(());
            }
            let durable = topology.binding_is_durable(&exchange, &binding.destination);
            (exchange, durable)
        };
        if durable {
            self.log(&Definition::Unbind(binding_definition(source, binding)))?;
        }
        if !blocking(self.slow_router(&exchange), || exchange.unbind(binding)) {
            return Ok(());
        }
        let mut topology = self.write_topology();
        topology.unbound(&exchange.spec.name, &binding.destination);
        if exchange.spec.auto_delete && !exchange.has_bindings() {
            topology.remove_exchange(&exchange.spec.name);
        }
        let dropped = self.finish(topology);
        self.log_dropped(dropped)
    }

    fn bindable_source(
        &self,
        topology: &Topology,
        source: &str,
    ) -> Result<Arc<Exchange>, AmqpError> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(format!(
                "operation not permitted on the default exchange in vhost '{}'",
                self.name
            )));
        }
        topology
            .exchanges
            .get(source)
            .cloned()
            .ok_or_else(|| self.not_found_exchange(source))
    }
}
