// Package suite runs the upstream Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance) against Gatewright.
//
// It takes the suite's own flags (-gateway-class, -conformance-profiles,
// -version, -report-output, -run-test, -skip-tests, -debug, ...) with
// Gatewright's defaults, plus:
//
//	-controller-name        GatewayClass controllerName (gatewright.dev/gateway-controller)
//	-create-gateway-class   create the GatewayClass when it does not exist (true)
//	-gateway-class-timeout  how long to wait for it to be Accepted (3m)
//
// The supported features are those the GatewayClass lists in
// status.supportedFeatures (the suite infers them when none are given on the
// command line), so the run waits for the class to be Accepted with a
// non-empty list before handing over to the suite.
package suite

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
)

var (
	controllerName = flag.String("controller-name", "gatewright.dev/gateway-controller",
		"controllerName of the GatewayClass created when -create-gateway-class is set")
	createGatewayClass = flag.Bool("create-gateway-class", true,
		"create the GatewayClass named by -gateway-class when it does not exist")
	gatewayClassTimeout = flag.Duration("gateway-class-timeout", 3*time.Minute,
		"how long to wait for the GatewayClass to be Accepted with status.supportedFeatures before running the suite")
)

// Defaults for the upstream suite's flags; anything given on the command
// line wins.
var suiteDefaults = map[string]string{
	"gateway-class": "gatewright",
	"conformance-profiles": strings.Join([]string{
		string(suite.GatewayHTTPConformanceProfileName),
		string(suite.GatewayTLSConformanceProfileName),
		string(suite.GatewayGRPCConformanceProfileName),
		string(suite.GatewayTCPConformanceProfileName),
		string(suite.GatewayUDPConformanceProfileName),
	}, ","),
	"organization": "gatewright",
	"project":      "gatewright",
	"url":          "https://gatewright.dev/",
	"version":      "dev",
	"contact":      "gatewright maintainers",
	// A provisioned Envoy pod drains for 15 s (preStop) before it stops, so
	// deleting the infrastructure namespace at the end of the run takes
	// longer than the suite's default 30 s.
	"timeout-config-overrides": "DeleteTimeout:120",
}

func TestMain(m *testing.M) {
	for name, value := range suiteDefaults {
		f := flag.Lookup(name)
		if f == nil {
			fmt.Fprintf(os.Stderr, "the conformance suite has no -%s flag any more\n", name)
			os.Exit(2)
		}
		// flag.Set (not f.Value.Set) marks the flag as given: since v1.7.0 the
		// suite applies only the flags that were set.
		if err := flag.Set(name, value); err != nil {
			fmt.Fprintf(os.Stderr, "setting -%s: %v\n", name, err)
			os.Exit(2)
		}
		f.DefValue = value
	}
	flag.Parse()
	if flag.Lookup("report-output").Value.String() == "" {
		// go test runs in conformance/suite: reports go to conformance/reports.
		dir, err := filepath.Abs(filepath.Join("..", "reports"))
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "reports folder: %v\n", err)
			os.Exit(1)
		}
		version := flag.Lookup("version").Value.String()
		report := filepath.Join(dir, fmt.Sprintf("gatewright-%s-report.yaml", version))
		if err := flag.Set("report-output", report); err != nil {
			fmt.Fprintf(os.Stderr, "setting -report-output: %v\n", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	ctx := context.Background()
	if err := ensureGatewayClass(ctx, t, opts.Client, opts.GatewayClassName); err != nil {
		t.Fatal(err)
	}
	if err := waitGatewayClassAccepted(ctx, t, opts.Client, opts.GatewayClassName, *gatewayClassTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %s", opts.ReportOutputPath)
	conformance.RunConformanceWithOptions(t, opts)
}

// ensureGatewayClass creates the GatewayClass when it is missing and
// -create-gateway-class is set.
func ensureGatewayClass(ctx context.Context, t *testing.T, c client.Client, name string) error {
	gwc := &gatewayv1.GatewayClass{}
	err := c.Get(ctx, types.NamespacedName{Name: name}, gwc)
	switch {
	case err == nil:
		t.Logf("GatewayClass %s exists (controllerName %s)", name, gwc.Spec.ControllerName)
		return nil
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("reading GatewayClass %s: %w (are the Gateway API CRDs installed?)", name, err)
	case !*createGatewayClass:
		return fmt.Errorf("GatewayClass %s does not exist (and -create-gateway-class=false)", name)
	}
	gwc = &gatewayv1.GatewayClass{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: gatewayv1.GatewayController(*controllerName)},
	}
	if err := c.Create(ctx, gwc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating GatewayClass %s: %w", name, err)
	}
	t.Logf("created GatewayClass %s (controllerName %s)", name, *controllerName)
	return nil
}

// waitGatewayClassAccepted waits until the GatewayClass is Accepted and lists
// its supported features, which the suite reads to pick its tests.
func waitGatewayClassAccepted(ctx context.Context, t *testing.T, c client.Client, name string, timeout time.Duration) error {
	t.Logf("waiting up to %s for GatewayClass %s to be Accepted with status.supportedFeatures", timeout, name)
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	state := "not read yet"
	for {
		gwc := &gatewayv1.GatewayClass{}
		if err := c.Get(ctx, types.NamespacedName{Name: name}, gwc); err != nil {
			state = fmt.Sprintf("get failed: %v", err)
		} else {
			cond := apimeta.FindStatusCondition(gwc.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted))
			switch {
			case cond == nil || cond.Reason == string(gatewayv1.GatewayClassReasonPending):
				state = fmt.Sprintf("not picked up by a controller yet (is %s running?)", gwc.Spec.ControllerName)
			case cond.Status != metav1.ConditionTrue:
				state = fmt.Sprintf("Accepted=%s reason=%s: %s", cond.Status, cond.Reason, cond.Message)
			case cond.ObservedGeneration != gwc.Generation:
				state = fmt.Sprintf("Accepted condition is for generation %d, not %d", cond.ObservedGeneration, gwc.Generation)
			case len(gwc.Status.SupportedFeatures) == 0:
				state = "Accepted, but status.supportedFeatures is empty"
			default:
				t.Logf("GatewayClass %s is Accepted; %d supported features", name, len(gwc.Status.SupportedFeatures))
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GatewayClass %s not Accepted within %s: %s", name, timeout, state)
		}
		if time.Since(lastLog) >= 10*time.Second {
			t.Logf("still waiting for GatewayClass %s: %s", name, state)
			lastLog = time.Now()
		}
		time.Sleep(time.Second)
	}
}
