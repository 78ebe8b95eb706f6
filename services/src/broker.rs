//! RabbitMQ through lapin: declares the topology that
//! [`common::queue::Topology`] describes, publishes persistent messages with
//! publisher confirms (waited for at most [`CONFIRM_TIMEOUT`]) and
//! `mandatory` (an unroutable publish is an error), moves messages to the
//! delay queues (one per delay level, declared when first used) and the
//! dead letters, and opens consumers with a prefetch of one.

use std::time::Duration;

use common::job::{DeviceClass, JobMessage};
use common::queue::{delay_level, Arg, Topology};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("message to {exchange}/{routing_key} was not routed to any queue")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("RabbitMQ did not confirm the message for {exchange}/{routing_key} within {secs} s (is a resource alarm raised?)")]
    ConfirmTimeout {
        exchange: String,
        routing_key: String,
        secs: u64,
    },
    #[error("RabbitMQ refused the message for {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
}

pub type Result<T> = std::result::Result<T, BrokerError>;

/// Header carrying the reason of a dead letter.
pub const REASON_HEADER: &str = "x-dead-reason";
/// Header carrying the attempt of a retried message.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header RabbitMQ sets on what it dead-letters itself (`delivery_limit`,
/// `expired`, `rejected`, `maxlen`).
pub const BROKER_REASON_HEADER: &str = "x-first-death-reason";
/// How long a publish waits for the broker's confirm: a broker under a
/// memory or disk alarm blocks publishers, which must not hang forever.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

fn table(args: &std::collections::BTreeMap<String, Arg>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        t.insert(ShortString::from(k.as_str()), value);
    }
    t
}

/// One connection and a confirming publisher channel.
pub struct Broker {
    conn: Connection,
    publisher: Channel,
    pub topology: Topology,
    delivery_limit: i64,
    /// Delay queues declared on this connection.
    declared: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Broker {
    /// Connects and declares the topology (idempotent).
    pub async fn connect(url: &str, topology: Topology, delivery_limit: i64) -> Result<Broker> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let b = Broker {
            conn,
            publisher,
            topology,
            delivery_limit,
            declared: Default::default(),
        };
        b.declare().await?;
        Ok(b)
    }

    async fn declare(&self) -> Result<()> {
        let t = &self.topology;
        let ch = &self.publisher;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            t.jobs_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            t.dead_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(
            t.dead_queue().into(),
            qopts,
            table(
                &[("x-queue-type".to_string(), Arg::Str("quorum".into()))]
                    .into_iter()
                    .collect(),
            ),
        )
        .await?;
        ch.queue_bind(
            t.dead_queue().into(),
            t.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for class in [DeviceClass::Gpu, DeviceClass::Cpu] {
            ch.queue_declare(
                t.jobs_queue(class).into(),
                qopts,
                table(&t.jobs_queue_args(self.delivery_limit)),
            )
            .await?;
            ch.queue_bind(
                t.jobs_queue(class).into(),
                t.jobs_exchange().into(),
                class.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares the delay queue of `class` for `level` once per connection.
    async fn declare_delay(&self, class: DeviceClass, level: Duration) -> Result<String> {
        let name = self.topology.delay_queue(class, level);
        if self
            .declared
            .lock()
            .map(|d| d.contains(&name))
            .unwrap_or(false)
        {
            return Ok(name);
        }
        self.publisher
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                table(&self.topology.delay_queue_args(class, level)),
            )
            .await?;
        if let Ok(mut d) = self.declared.lock() {
            d.insert(name.clone());
        }
        Ok(name)
    }

    /// Publishes persistently with `mandatory`, waiting for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let timeout = || BrokerError::ConfirmTimeout {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            secs: CONFIRM_TIMEOUT.as_secs(),
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?
                .await
        })
        .await
        .map_err(|_| timeout())??;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            }),
            Confirmation::Nack(_) => Err(BrokerError::Nacked {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            }),
        }
    }

    /// Publishes a job to the queue of its device class.
    pub async fn publish_job(&self, msg: &JobMessage) -> Result<()> {
        self.publish_body(msg.device, &msg.encode(), msg.attempt)
            .await
    }

    /// Publishes a job's encoded message to the work queue of `class` as
    /// `attempt` (a republish or a hand-back).
    pub async fn publish_body(&self, class: DeviceClass, body: &[u8], attempt: u32) -> Result<()> {
        self.publish(
            &self.topology.jobs_exchange(),
            class.as_str(),
            body,
            attempt_props(attempt),
        )
        .await
    }

    /// Publishes raw bytes to the jobs exchange (tests).
    pub async fn publish_raw(&self, class: DeviceClass, body: &[u8]) -> Result<()> {
        self.publish(
            &self.topology.jobs_exchange(),
            class.as_str(),
            body,
            BasicProperties::default(),
        )
        .await
    }

    /// Parks a message in a delay queue; it returns to the work queue of
    /// `class` after `delay` rounded up to a delay level.
    pub async fn publish_later(
        &self,
        class: DeviceClass,
        body: &[u8],
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        let queue = self.declare_delay(class, delay_level(delay)).await?;
        self.publish("", &queue, body, attempt_props(attempt)).await
    }

    /// Sends a message to the dead letters with its reason.
    pub async fn dead_letter(&self, body: &[u8], reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let props = BasicProperties::default().with_headers(headers);
        self.publish(&self.topology.dead_exchange(), "", body, props)
            .await
    }

    /// A consumer of `class` jobs on its own channel, one unacked message at a time.
    pub async fn consume(&self, class: DeviceClass, tag: &str) -> Result<(Channel, Consumer)> {
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        ch.basic_qos(1, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                self.topology.jobs_queue(class).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    }

    /// A consumer of the dead letters, one unacked message at a time.
    pub async fn consume_dead(&self, tag: &str) -> Result<(Channel, Consumer)> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(1, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                self.topology.dead_queue().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    }

    /// (ready messages, consumers) of a queue.
    pub async fn queue_counts(&self, queue: &str) -> Result<(u32, u32)> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let counts = (q.message_count(), q.consumer_count());
        if let Err(e) = ch.close(200, "ok".into()).await {
            tracing::debug!(error = %e, "closing a channel (it closes with its connection anyway)");
        }
        Ok(counts)
    }

    /// Deletes every queue and exchange of the topology (tests).
    pub async fn delete_topology(&self) -> Result<()> {
        let t = &self.topology;
        let ch = self.conn.create_channel().await?;
        let mut queues = vec![t.dead_queue()];
        for c in [DeviceClass::Gpu, DeviceClass::Cpu] {
            queues.push(t.jobs_queue(c));
            queues.extend(t.delay_queues(c));
        }
        for q in queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in [t.jobs_exchange(), t.dead_exchange()] {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// The underlying connection (to close it, or open more channels).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn attempt_props(attempt: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(attempt as i64),
    );
    BasicProperties::default().with_headers(headers)
}

/// Why a dead letter is one: the worker's reason, or the broker's (with the
/// number of deliveries it counted).
pub fn dead_reason(props: &BasicProperties) -> String {
    if let Some(r) = header(props, REASON_HEADER) {
        return r;
    }
    let count = header(props, "x-delivery-count");
    match (header(props, BROKER_REASON_HEADER), count) {
        (Some(r), Some(n)) => format!("dead-lettered by RabbitMQ ({r}) after {n} deliveries"),
        (Some(r), None) => format!("dead-lettered by RabbitMQ ({r})"),
        (None, _) => "dead-lettered (no reason given)".into(),
    }
}

/// A header value of a delivery as text.
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::LongUInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}
