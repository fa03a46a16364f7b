// Command check evaluates the healthCheckExprs of ../kustomization.yaml with
// Flux's own CEL status evaluator (github.com/fluxcd/pkg/runtime/cel, the one
// kustomize-controller uses) against the objects captured from the end-to-end
// tests (../../argocd/crmessenger.io/KIND/testdata), and compares each result with
// what the Argo CD case of that object expects: Healthy and Suspended are Current,
// Progressing is InProgress, Degraded is Failed. It prints one line per object
// and exits 1 on a mismatch.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

type kustomization struct {
	Spec struct {
		HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
	} `json:"spec"`
}

type argoTests struct {
	Tests []struct {
		HealthStatus struct {
			Status string `json:"status"`
		} `json:"healthStatus"`
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

var fluxStatus = map[string]string{
	"Healthy":     "Current",
	"Suspended":   "Current",
	"Progressing": "InProgress",
	"Degraded":    "Failed",
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(data, into)
}

func run() error {
	flux := filepath.Join("..")
	argo := filepath.Join("..", "..", "argocd", "crmessenger.io")
	var k kustomization
	if err := readYAML(filepath.Join(flux, "kustomization.yaml"), &k); err != nil {
		return err
	}
	mismatches := 0
	for _, check := range k.Spec.HealthCheckExprs {
		evaluator, err := cel.NewStatusEvaluator(&check.HealthCheckExpressions)
		if err != nil {
			return fmt.Errorf("%s: %w", check.Kind, err)
		}
		var tests argoTests
		if err := readYAML(filepath.Join(argo, check.Kind, "health_test.yaml"), &tests); err != nil {
			return err
		}
		if len(tests.Tests) == 0 {
			return fmt.Errorf("%s: no captured objects", check.Kind)
		}
		for _, t := range tests.Tests {
			// As the API server hands objects over: integers are int64 (a plain
			// YAML decode would make them float64, which hides observedGeneration).
			data, err := os.ReadFile(filepath.Join(argo, check.Kind, t.InputPath))
			if err != nil {
				return err
			}
			asJSON, err := yaml.YAMLToJSON(data)
			if err != nil {
				return err
			}
			obj := &unstructured.Unstructured{}
			if err := obj.UnmarshalJSON(asJSON); err != nil {
				return fmt.Errorf("%s %s: %w", check.Kind, t.InputPath, err)
			}
			result, err := evaluator.Evaluate(context.Background(), obj)
			if err != nil {
				return fmt.Errorf("%s %s: %w", check.Kind, t.InputPath, err)
			}
			want := fluxStatus[t.HealthStatus.Status]
			got := string(result.Status)
			verdict := "ok"
			if got != want {
				verdict = "MISMATCH"
				mismatches++
			}
			fmt.Printf("%s %s %s: %s (want %s)\n", verdict, check.Kind, t.InputPath, got, want)
		}
	}
	if mismatches > 0 {
		return fmt.Errorf("%d mismatches", mismatches)
	}
	return nil
}
