// Package k8s holds allot's Kubernetes manifests (kustomize bases,
// components and overlays) and the offline test that renders every overlay
// and checks the objects it produces.
package k8s
