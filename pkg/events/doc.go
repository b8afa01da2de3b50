// Package events is allot's wire contract and the client library
// applications import.
//
// It holds:
//
//   - the usage event (CloudEvents 1.0, JSON structured mode), its encoder,
//     its strict decoder and its validation rules ([Event], [Decode]);
//   - every request and reply of allot's request/reply endpoints, and the
//     error body they share ([CreditRequest], [CheckReply], [ErrorBody], ...);
//   - subject names, built and parsed in one place, with configurable
//     prefixes ([Subjects]);
//   - the JetStream streams allot needs ([EnsureStreams]);
//   - publishers: [Publisher] waits for each stream ack, [AsyncPublisher]
//     keeps a bounded window in flight and reports exactly what failed;
//   - [Client], a typed client for every request/reply endpoint.
//
// Publishing one event:
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	pub, _ := events.NewPublisher(nc, events.PublisherOptions{Source: "photos"})
//	ack, err := pub.Publish(ctx, events.NewUsage("u-42", "photo_daily_total", 1))
//
// Asking for credit:
//
//	c := events.NewClient(nc, events.ClientOptions{})
//	credit, err := c.Credit(ctx, "u-42", "photo_daily_total")
//	if errors.Is(err, events.ErrNotFound) { ... }
package events
