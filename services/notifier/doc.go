// Package notifier is allot's background-job service: an asynq server on
// allot's Redis that sends confirmation emails and usage notices, and
// refreshes the service registry on a schedule, each exactly once.
package notifier
