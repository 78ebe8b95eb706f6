//! RabbitMQ through lapin: declares the topology that
//! [`common::queue::Topology`] describes, publishes persistent messages with
//! publisher confirms and `mandatory` (an unroutable publish is an error),
//! moves messages to the delay and dead-letter queues, and opens consumers
//! with a prefetch of one.

use std::time::Duration;

use common::job::{DeviceClass, JobMessage};
use common::queue::{Arg, Topology};
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
            ch.queue_declare(
                t.retry_queue(class).into(),
                qopts,
                table(&t.retry_queue_args(class)),
            )
            .await?;
        }
        Ok(())
    }

    /// Publishes persistently with `mandatory`, waiting for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let confirm = self
            .publisher
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
            .await?;
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
        let props = BasicProperties::default().with_message_id(msg.job_id.as_str().into());
        self.publish(
            &self.topology.jobs_exchange(),
            msg.device.as_str(),
            &msg.encode(),
            props,
        )
        .await
    }

    /// Publishes raw bytes to the jobs exchange (tests, and re-queueing).
    pub async fn publish_raw(&self, class: DeviceClass, body: &[u8]) -> Result<()> {
        self.publish(
            &self.topology.jobs_exchange(),
            class.as_str(),
            body,
            BasicProperties::default(),
        )
        .await
    }

    /// Parks a message in the delay queue; it returns to the work queue of
    /// `class` after `delay`.
    pub async fn retry_later(
        &self,
        class: DeviceClass,
        body: &[u8],
        attempt: u32,
        delay: Duration,
    ) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(attempt as i64),
        );
        let props = BasicProperties::default()
            .with_expiration(delay.as_millis().to_string().as_str().into())
            .with_headers(headers);
        self.publish("", &self.topology.retry_queue(class), body, props)
            .await
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

    /// A consumer of the dead letters (inspection and tests).
    pub async fn consume_dead(&self, tag: &str) -> Result<(Channel, Consumer)> {
        let ch = self.conn.create_channel().await?;
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
        let _ = ch.close(200, "ok".into()).await;
        Ok(counts)
    }

    /// Deletes every queue and exchange of the topology (tests).
    pub async fn delete_topology(&self) -> Result<()> {
        let t = &self.topology;
        let ch = self.conn.create_channel().await?;
        let mut queues = vec![t.dead_queue()];
        for c in [DeviceClass::Gpu, DeviceClass::Cpu] {
            queues.push(t.jobs_queue(c));
            queues.push(t.retry_queue(c));
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
