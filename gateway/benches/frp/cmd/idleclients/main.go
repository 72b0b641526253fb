// Command idleclients connects N idle frp clients to one frps, each as a
// separate frpc would (its own control connection, login and one tcp
// proxy), all in this process: the gateway bench reads frps's memory
// before and after, as it does the hub's for its idle agents.
//
// Usage: idleclients -config frpc.toml -n N
//
// The config names the server and one tcp proxy; client i runs it with
// the proxy renamed "<name>-<i>" and the remote port chosen by frps. Once
// every proxy is running, it prints "READY <n>" and waits for stdin to
// reach EOF.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fatedier/frp/client"
	"github.com/fatedier/frp/client/proxy"
	"github.com/fatedier/frp/pkg/config"
	v1 "github.com/fatedier/frp/pkg/config/v1"
	"github.com/fatedier/frp/pkg/util/log"
)

func main() {
	path := flag.String("config", "", "frpc config (toml) with one tcp proxy")
	n := flag.Int("n", 1000, "clients")
	window := flag.Int("window", 64, "clients connecting at once")
	limit := flag.Duration("limit", 5*time.Minute, "bound on the whole connect")
	flag.Parse()
	if err := run(*path, *n, *window, *limit); err != nil {
		fmt.Fprintf(os.Stderr, "idleclients: %v\n", err)
		os.Exit(1)
	}
	// Idle until the orchestrator closes stdin.
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func run(path string, n, window int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	log.InitLogger("console", "error", 3, true)
	slots := make(chan struct{}, window)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		slots <- struct{}{}
		common, proxies, _, _, err := config.LoadClientConfig(path, false)
		if err != nil {
			return err
		}
		if len(proxies) != 1 {
			return fmt.Errorf("%s: want one proxy, got %d", path, len(proxies))
		}
		base := proxies[0].GetBaseConfig()
		base.Name = fmt.Sprintf("%s-%d", base.Name, i)
		if tcp, ok := proxies[0].(*v1.TCPProxyConfig); ok {
			tcp.RemotePort = 0
		}
		svr, err := client.NewService(client.ServiceOptions{Common: common, ProxyCfgs: proxies})
		if err != nil {
			return err
		}
		go func() {
			if err := svr.Run(context.Background()); err != nil {
				errs <- err
			}
		}()
		go func(name string) {
			defer func() { <-slots }()
			for time.Now().Before(deadline) {
				if st, ok := svr.StatusExporter().GetProxyStatus(name); ok && st.Phase == proxy.ProxyPhaseRunning {
					errs <- nil
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			errs <- fmt.Errorf("proxy %s not running by the deadline", name)
		}(base.Name)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			return err
		}
	}
	fmt.Printf("READY %d\n", n)
	return nil
}
