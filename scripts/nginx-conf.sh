# Sourced by scripts/bench and scripts/stall.
# nginx_conf DIR PORT LISTEN_OPTIONS: a configuration whose every path is in DIR.
# keepalive_requests is raised from its default of 1000, after which nginx
# closes the connection: no other server here does that.
nginx_conf() {
	local dir=$1 port=$2 opts=$3 temp
	temp=$(nginx -V 2>&1 | grep -o -- '--http-[a-z-]*-temp-path' |
		sed "s/^--http-//; s/-temp-path\$//; s/-/_/g; s|.*|    &_temp_path $dir/&;|")
	cat >"$dir/nginx.conf" <<-EOF
		worker_processes $WORKERS;
		daemon off;
		pid $dir/nginx.pid;
		error_log $dir/error.log;
		events { worker_connections 4096; }
		http {
		    access_log off;
		    keepalive_requests 1000000;
		    default_type text/plain;
		$temp
		    server {
		        listen 127.0.0.1:$port$opts;
		        location = / { return 200 "Hello World"; }
		    }
		}
	EOF
}
