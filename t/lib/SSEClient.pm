package SSEClient;

# A raw-socket EventSource client: sends the GET, reads the response head, then decodes the
# body (chunked or close-delimited) and parses SSE frames from it, keeping the exact bytes.

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

sub new {
    my ($class, %o) = @_;
    my $sock;
    if ($o{rcvbuf}) {
        # A small receive buffer, set before connect so the window is small from the start: the
        # server's writes back up as soon as the client stops reading.
        $sock = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        $sock->setsockopt(SOL_SOCKET, SO_RCVBUF, $o{rcvbuf}) or die "setsockopt: $!";
        $sock->connect(pack_sockaddr_in($o{port}, inet_aton('127.0.0.1'))) or die "connect: $!";
    } else {
        $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $o{port}, Proto => 'tcp')
            or die "connect: $!";
    }
    $sock->blocking(0);
    my $self = bless {sock => $sock, buf => '', body => '', parsed_upto => 0, events => [], comments => [],
                      retry => undef, eof => 0, chunked => 0, pending => '', %o}, $class;
    my $proto = $o{http10} ? 'HTTP/1.0' : 'HTTP/1.1';
    my $req = "GET $o{path} $proto\r\nHost: localhost\r\n";
    my %h = %{ $o{headers} || {} };
    $req .= "Accept: text/event-stream\r\n" unless exists $h{Accept} || $o{no_accept};
    for my $k (sort keys %h) { $req .= "$k: $h{$k}\r\n" }
    $req .= "\r\n";
    # {headers} holds the response's from here on; the caller's request headers stay untouched.
    $self->{headers} = {};
    $self->_write($req);
    $self->_read_head($o{timeout} // 5) unless $o{no_wait};
    return $self;
}

sub _write {
    my ($self, $data) = @_;
    my $sel = IO::Select->new($self->{sock});
    while (length $data) {
        $sel->can_write(5) or die "write timeout";
        my $n = syswrite($self->{sock}, $data);
        die "write: $!" unless defined $n || $!{EAGAIN};
        substr($data, 0, $n, '') if $n;
    }
}

# Reads what is available within $timeout; returns false at EOF.
sub _fill {
    my ($self, $timeout) = @_;
    return 0 if $self->{eof};
    my $sel = IO::Select->new($self->{sock});
    return 1 unless $sel->can_read($timeout);
    my $n = sysread($self->{sock}, my $chunk, 65536);
    if (!defined $n) {
        return 1 if $!{EAGAIN};
        $self->{eof} = 1;
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    $self->{raw} .= $chunk;
    if ($self->{head_done}) {
        $self->_decode($chunk);
    } else {
        $self->{buf} .= $chunk;
    }
    return 1;
}

sub _read_head {
    my ($self, $timeout) = @_;
    my $end = time + $timeout;
    while ($self->{buf} !~ /\r\n\r\n/) {
        die "no response head within ${timeout}s" if time > $end;
        $self->_fill(0.1) or last;
    }
    my ($head, $rest) = split /\r\n\r\n/, $self->{buf}, 2;
    die "no response head" unless defined $head;
    my @lines = split /\r\n/, $head;
    my $status_line = shift @lines;
    ($self->{status}) = $status_line =~ m{^HTTP/\d\.\d (\d+)};
    $self->{status_line} = $status_line;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        push @{ $self->{header_list} }, [$k, $v];
        $self->{headers}{lc $k} = exists $self->{headers}{lc $k} ? "$self->{headers}{lc $k}, $v" : $v;
    }
    $self->{head} = $head;
    $self->{chunked} = (($self->{headers}{'transfer-encoding'} // '') =~ /chunked/i) ? 1 : 0;
    $self->{head_done} = 1;
    $self->{buf} = '';
    $self->_decode($rest // '');
}

sub _decode {
    my ($self, $data) = @_;
    if (!$self->{chunked}) {
        $self->{body} .= $data;
    } else {
        $self->{pending} .= $data;
        while (1) {
            last unless $self->{pending} =~ /^([0-9a-fA-F]+)\r\n/;
            my $n = hex $1;
            my $hl = length($1) + 2;
            if ($n == 0) {
                $self->{last_chunk} = 1;
                $self->{pending} = '';
                last;
            }
            last if length($self->{pending}) < $hl + $n + 2;
            $self->{body} .= substr($self->{pending}, $hl, $n);
            substr($self->{pending}, 0, $hl + $n + 2, '');
        }
    }
    $self->_parse;
}

# Parses complete frames (blank-line terminated) from the body into events and comments.
sub _parse {
    my ($self) = @_;
    while (1) {
        my $rest = substr($self->{body}, $self->{parsed_upto});
        last unless $rest =~ /^(.*?)\n\n/s;
        my $frame = $1;
        $self->{parsed_upto} += length($frame) + 2;
        my %ev;
        my @data;
        for my $line (split /\n/, $frame, -1) {
            if ($line =~ /^:(.*)$/) { push @{ $self->{comments} }, $1; next }
            my ($f, $v) = $line =~ /^([^:]*):? ?(.*)$/;
            if ($f eq 'data') { push @data, $v }
            elsif ($f eq 'id') { $ev{id} = $v }
            elsif ($f eq 'event') { $ev{event} = $v }
            elsif ($f eq 'retry') { $self->{retry} = $v }
        }
        next unless @data;
        $ev{data} = join "\n", @data;
        $ev{frame} = "$frame\n\n";
        push @{ $self->{events} }, \%ev;
    }
}

sub status { $_[0]{status} }
sub headers { $_[0]{headers} }
sub header { my ($self, $k) = @_; return $self->{headers}{lc $k} }
sub head { $_[0]{head} }
sub body { $_[0]{body} }
sub raw { $_[0]{raw} }
sub comments { @{ $_[0]{comments} } }
sub retry { $_[0]{retry} }
sub eof { $_[0]{eof} }
sub ended_cleanly { my $s = $_[0]; return $s->{eof} && (!$s->{chunked} || $s->{last_chunk}) }

# Waits until at least $n events have arrived (or $timeout seconds, default 5); returns all
# events received so far.
sub events {
    my ($self, $n, $timeout) = @_;
    $n //= 0;
    my $end = time + ($timeout // 5);
    while (@{ $self->{events} } < $n && time < $end) {
        $self->_fill(0.05) or last;
    }
    return @{ $self->{events} };
}

# Reads for $seconds, whatever comes; returns all events.
sub drain {
    my ($self, $seconds) = @_;
    my $end = time + $seconds;
    while (time < $end) {
        $self->_fill(0.05) or last;
    }
    return @{ $self->{events} };
}

# Waits until the body holds $bytes bytes or $timeout passes; returns the body.
sub wait_body {
    my ($self, $bytes, $timeout) = @_;
    my $end = time + ($timeout // 5);
    while (length($self->{body}) < $bytes && time < $end) {
        $self->_fill(0.05) or last;
    }
    return $self->{body};
}

# Reads until the newest event has an id >= $id (true), the stream ends or $timeout (10) s pass (false).
sub wait_for_id {
    my ($self, $id, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (time < $end) {
        my @e = $self->events;
        return 1 if @e && defined $e[-1]{id} && $e[-1]{id} >= $id;
        last if $self->eof;
        $self->events(@e + 1, 0.2);
    }
    return 0;
}

# Waits until the server closes the connection.
sub wait_eof {
    my ($self, $timeout) = @_;
    my $end = time + ($timeout // 5);
    while (!$self->{eof} && time < $end) {
        $self->_fill(0.05);
    }
    return $self->{eof};
}

sub close {
    my ($self) = @_;
    close $self->{sock} if $self->{sock};
    $self->{sock} = undef;
}

sub DESTROY { $_[0]->close }

1;
