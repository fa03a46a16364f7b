// A network probe for the test node's pods: for each argument it prints one line.
//
//	route:HOST:PORT     whether the pod has a route to HOST: "ENETUNREACH", or
//	                    "routable from ADDR". A UDP connect only looks the route
//	                    up: no packet is sent, whatever the answer.
//	connect:HOST:PORT   the error of a TCP connect, or "connected" (for addresses
//	                    on this machine only)
//	resolve:NAME        the addresses NAME resolves to, or the error
//	dns:IP:PORT:NAME    the same, asking the DNS server at IP:PORT only
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	for _, arg := range os.Args[1:] {
		kind, target, _ := strings.Cut(arg, ":")
		switch kind {
		case "route":
			conn, err := net.Dial("udp", target)
			switch {
			case err == nil:
				fmt.Printf("%s routable from %s\n", arg, conn.LocalAddr())
				conn.Close()
			case errors.Is(err, syscall.ENETUNREACH):
				fmt.Printf("%s ENETUNREACH\n", arg)
			default:
				fmt.Printf("%s error %v\n", arg, err)
			}
		case "connect":
			conn, err := net.DialTimeout("tcp", target, 3*time.Second)
			switch {
			case err == nil:
				conn.Close()
				fmt.Printf("%s connected\n", arg)
			case errors.Is(err, syscall.ENETUNREACH):
				fmt.Printf("%s ENETUNREACH\n", arg)
			default:
				fmt.Printf("%s error %v\n", arg, err)
			}
		case "resolve":
			lookup(arg, net.DefaultResolver, target)
		case "dns":
			i := strings.LastIndex(target, ":")
			if i < 0 {
				fmt.Printf("%s error: dns:IP:PORT:NAME\n", arg)
				continue
			}
			server, name := target[:i], target[i+1:]
			resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, server)
			}}
			lookup(arg, resolver, name)
		default:
			fmt.Printf("%s unknown probe\n", arg)
		}
	}
}

func lookup(arg string, resolver *net.Resolver, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	addrs, err := resolver.LookupHost(ctx, name)
	if err != nil {
		fmt.Printf("%s error %v\n", arg, err)
	} else {
		fmt.Printf("%s %s\n", arg, strings.Join(addrs, ","))
	}
}
